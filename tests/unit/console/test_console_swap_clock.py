"""The console's swap clock: a worker seen behind its deployment's revision and then converged on it
gets the time since the change; one already converged when the console first looked gets none;
only each deployment's current revision is kept."""

from __future__ import annotations

import dataclasses

import pytest

from modelyard.console.present import DeploymentView, SwapClock, WorkerView


def view(revision: int, workers: dict[str, tuple[int, bool]], changed_at: float = 100.0) -> DeploymentView:
    return DeploymentView(
        name="text", model_id="m", model_type="", description="", routes=[], follow_alias="",
        revision=revision, updated_at="", embedding_dim=0, converged=False, updated_at_s=changed_at,
        workers=[
            WorkerView(worker_id=w, address="", state="serving", live=True, lost=False, fallback=False,
                       last_error="", last_seen="", revision=r, converged=c, detail="", versions=[])
            for w, (r, c) in workers.items()
        ],
    )  # fmt: skip


def test_a_flip_seen_by_the_stream_is_timed_from_the_change() -> None:
    clock = SwapClock()
    first = clock.stamp([view(7, {"a": (7, True), "b": (7, True)}, changed_at=50.0)], now=101.0)
    assert [w.switched_s for w in first[0].workers] == [None, None], "converged before the stream began"
    behind = clock.stamp([view(8, {"a": (7, True), "b": (8, False)})], now=100.2)
    assert behind[0].switch_s is None
    half = clock.stamp([view(8, {"a": (8, True), "b": (8, False)})], now=100.4)
    assert [w.switched_s for w in half[0].workers] == [pytest.approx(0.4), None]
    done = clock.stamp([view(8, {"a": (8, True), "b": (8, True)})], now=100.9)
    assert done[0].switch_s == done[0].workers[1].switched_s == pytest.approx(0.9)
    again = clock.stamp([view(8, {"a": (8, True), "b": (8, True)})], now=130.0)
    assert again[0].switch_s == done[0].switch_s, "the first sighting counts, not the latest"


def test_only_the_current_revision_is_kept() -> None:
    clock = SwapClock()
    clock.stamp([view(8, {"a": (7, True)})], now=100.1)
    clock.stamp([view(8, {"a": (8, True)})], now=100.3)
    clock.stamp([dataclasses.replace(view(3, {"a": (2, True)}), name="other")], now=100.3)
    later = clock.stamp([view(9, {"a": (9, True)}, changed_at=200.0)], now=200.5)
    assert later[0].workers[0].switched_s is None, "never seen behind revision 9"
    kept = clock._behind | set(clock._switched)
    assert kept == {("other", 3, "a")}, "revision 8 forgotten, the other deployment kept"
