"""The catalog: models and their versions as cards, searched and paged by the registry
(ListVersions' page tokens, so a page costs the same at 10 versions or 10,000), each card with its
version's newest benchmark metrics (GetVersionMetrics, for the cards of the page only, at once)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from starlette.responses import Response

from modelyard.api import registry_pb2 as pb
from modelyard.client import RegistryClient
from modelyard.common.errors import NotFound, Unimplemented
from modelyard.console.present import model_type, version_card
from modelyard.console.web import Page, page

MAX_PAGE_SIZE = 200


def _page_size(current: Page) -> int:
    raw = current.query("page_size")
    if raw.isdigit() and int(raw) > 0:
        return min(int(raw), MAX_PAGE_SIZE)
    return current.console.settings.page_size


async def newest_metrics(registry: RegistryClient, version: pb.ModelVersion) -> list[pb.VersionMetric]:
    """The newest value of each metric of the version's succeeded runs; none for a registry from
    before GetVersionMetrics, or a version removed since the listing. Other failures fail the page."""
    try:
        request = pb.GetVersionMetricsRequest(model_id=version.model_id, version=version.version)
        return list((await registry.get_version_metrics(request)).metrics)
    except (NotFound, Unimplemented):
        return []


@page()
async def catalog(current: Page) -> Response:
    registry = await current.registry()
    model_id, query = current.query("model"), current.query("q")
    token = current.query("page_token")
    # Tokens of the pages before this one, so "previous" needs no server-side state.
    trail = current.request.query_params.getlist("trail")
    size = _page_size(current)
    models, versions = await asyncio.gather(
        registry.list_models(pb.ListModelsRequest(page_size=MAX_PAGE_SIZE)),
        registry.list_versions(
            pb.ListVersionsRequest(model_id=model_id, query=query, page_size=size, page_token=token)
        ),
    )
    # One call per card of this page, all at once: one round trip more for the page, though the
    # registry still serves each (about 1 ms apiece in tests/bench/bench_console.py's setting).
    metrics = await asyncio.gather(*(newest_metrics(registry, v) for v in versions.versions))
    wanted = {"model": model_id, "q": query, "page_size": str(size) if current.query("page_size") else ""}
    base = {k: v for k, v in wanted.items() if v}

    def link(page_token: str, page_trail: list[str]) -> str:
        params: list[tuple[str, str]] = list(base.items())
        if page_token:
            params.append(("page_token", page_token))
        params += [("trail", t) for t in page_trail]
        return "/catalog" + (f"?{urlencode(params)}" if params else "")

    next_link = link(versions.next_page_token, [*trail, token]) if versions.next_page_token else ""
    previous_link = link(trail[-1], trail[:-1]) if token else ""
    return current.render(
        "catalog.html",
        models=[(m.model_id, model_type(m.model_type), m.description) for m in models.models],
        cards=[version_card(v, m) for v, m in zip(versions.versions, metrics, strict=True)],
        model_id=model_id,
        query=query,
        page_number=len(trail) + 1 if token else 1,
        next_link=next_link,
        previous_link=previous_link,
    )
