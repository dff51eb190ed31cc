"""/api/v1: every endpoint module's declarations, and the OpenAPI document built from them."""

from __future__ import annotations

from aiohttp import web

from aggregator.api import admin, calendars, contacts, conversations, rules, sla, stream, templates, workspace
from aggregator.api.framework import API, Api, Call

meta = Api()


@meta.endpoint(
    "GET",
    "/openapi.json",
    summary="This API's OpenAPI 3.1 document",
    tag="meta",
    roles=None,
    content_type="application/json",
    content_schema={"type": "object", "required": ["openapi", "info", "paths"]},
)
async def get_openapi(call: Call) -> web.StreamResponse:
    return web.json_response(call.request.app[API].openapi())


def build_api() -> Api:
    api = Api()
    modules = (conversations, contacts, templates, workspace, admin, calendars, sla, rules, stream)
    for module_api in (meta, *(module.api for module in modules)):
        api.include(module_api)
    return api
