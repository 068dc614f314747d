"""History: the registry's audit log, filtered by entity and action, paged by its tokens."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.responses import Response

from modelyard.api import registry_pb2 as pb
from modelyard.console.present import audit_view
from modelyard.console.web import Page, page


@page()
async def history(current: Page) -> Response:
    registry = await current.registry()
    filters = {
        "entity_type": current.query("entity_type"),
        "entity_id": current.query("entity_id"),
        "action": current.query("action"),
    }
    token = current.query("page_token")
    trail = current.request.query_params.getlist("trail")
    listed = await registry.list_audit_events(
        pb.ListAuditEventsRequest(**filters, page_size=current.console.settings.page_size, page_token=token)
    )
    base = [(k, v) for k, v in filters.items() if v]

    def link(page_token: str, page_trail: list[str]) -> str:
        params = [
            *base,
            *([("page_token", page_token)] if page_token else []),
            *(("trail", t) for t in page_trail),
        ]
        return "/history" + (f"?{urlencode(params)}" if params else "")

    return current.render(
        "history.html",
        events=[audit_view(e) for e in listed.events],
        filters=filters,
        page_number=len(trail) + 1 if token else 1,
        next_link=link(listed.next_page_token, [*trail, token]) if listed.next_page_token else "",
        previous_link=link(trail[-1], trail[:-1]) if token else "",
    )
