"""The deployments a worker last applied, kept in a file beside its artifact cache, so that a worker
started while the registry is unreachable can serve them from the verified cache.

The file is a JSON list of registry `Deployment` messages (protobuf JSON mapping), the format
`--static-deployments` reads, holding only what was applied: the routes that were switched in and
the specs of their versions (a refused change or a staged version that failed is not in it).
Several workers on one host may share a cache directory and serve different deployments, so each
write merges this worker's changes into the file under an exclusive lock (read, change the entries
of the deployments that changed, write a temporary file, fsync, rename, fsync the directory); a
reader never sees a half-written file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from modelyard.api import registry_pb2 as rpb
from modelyard.common.log import event
from modelyard.inference.converters import deployment_from_registry, deployment_to_registry
from modelyard.inference.domain import DeploymentSpec

log = logging.getLogger("modelyard.inference.applied_state")


class AppliedState:
    """Record with `record(name, spec)` (None = removed) from the event loop; writes happen in the
    default executor, one at a time, newest change last. `read()` is blocking."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._pending: dict[str, DeploymentSpec | None] = {}
        self._writer: asyncio.Task[None] | None = None

    # --- reading (blocking) ---------------------------------------------------------------------
    def read(self) -> list[DeploymentSpec]:
        """The stored deployments; none when the file is missing or unreadable (logged)."""
        try:
            documents = self._read_documents()
        except (OSError, ValueError) as exc:
            event(log, "applied_state.unreadable", level=logging.WARNING, path=str(self.path), error=str(exc))
            return []
        specs = []
        for name, document in sorted(documents.items()):
            try:
                specs.append(deployment_from_registry(json_format.ParseDict(document, rpb.Deployment())))
            except json_format.ParseError as exc:
                event(
                    log, "applied_state.entry_skipped", level=logging.WARNING, deployment=name, error=str(exc)
                )
        return specs

    def _read_documents(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        documents = json.loads(self.path.read_text())
        if not isinstance(documents, list):
            raise ValueError(f"{self.path} holds {type(documents).__name__}, not a list of deployments")
        return {str(d.get("name", "")): d for d in documents if isinstance(d, dict)}

    # --- writing --------------------------------------------------------------------------------
    def record(self, name: str, spec: DeploymentSpec | None) -> None:
        """Remember that `name` now serves `spec` (None: it was removed). Call from the event loop."""
        self._pending[name] = spec
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="applied-state")

    async def close(self) -> None:
        """Wait until every recorded change is on disk (or failed to be written, logged)."""
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            changes, self._pending = self._pending, {}
            documents = {
                name: json_format.MessageToDict(deployment_to_registry(spec)) if spec is not None else None
                for name, spec in changes.items()
            }
            try:
                await loop.run_in_executor(None, self._merge_blocking, documents)
            except (OSError, ValueError) as exc:
                # The disk may be full: keep the changes (newer ones win) for the next write.
                self._pending = {**changes, **self._pending}
                event(
                    log,
                    "applied_state.write_failed",
                    level=logging.WARNING,
                    path=str(self.path),
                    error=str(exc),
                )
                return

    def _merge_blocking(self, changes: dict[str, dict[str, Any] | None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    documents = self._read_documents()
                except (OSError, ValueError) as exc:
                    event(
                        log,
                        "applied_state.replaced",
                        level=logging.WARNING,
                        path=str(self.path),
                        error=str(exc),
                    )
                    documents = {}
                for name, document in changes.items():
                    if document is None:
                        documents.pop(name, None)
                    else:
                        documents[name] = document
                self._write_atomically([documents[name] for name in sorted(documents)])
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write_atomically(self, documents: list[dict[str, Any]]) -> None:
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(documents, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
