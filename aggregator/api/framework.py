"""The REST API's small framework: one declaration per endpoint drives routing, authentication, the role
check, request validation and the OpenAPI document, so the document cannot drift from what runs.

Order of checks on every request: token (401), role (403, whatever the body), then the query and the
body (400 naming the field, 413 over the size limit), then the handler. A record of another workspace
is 404, exactly as a record that does not exist.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from aggregator.api.keys import ATTACHMENTS, BUS, CHANNELS, ENQUEUE_OUTBOX, PREFIX, STORE
from aggregator.attachments import AttachmentStore
from aggregator.bus import Bus
from aggregator.channels import ChannelManager
from aggregator.model import Role
from aggregator.store import Conflict, Invalid, NotFound, Store, TokenInfo
from aggregator.store.schema import format_time

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
ALL_ROLES = frozenset(Role)
STAFF = frozenset({Role.ADMIN, Role.AGENT})
ADMIN = frozenset({Role.ADMIN})
# last_used_at is written at most this often per token: a write per request would serialise reads.
TOKEN_TOUCH_SECONDS = 60.0

M = TypeVar("M", bound=BaseModel)


class ApiModel(BaseModel):
    """Request bodies and query strings: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def not_null(schema: dict[str, Any]) -> None:
    """`json_schema_extra` of a field that may be left out but not sent as null: no null in the document.

    Pydantic documents `X | None = None` as `anyOf: [X, null]` with `default: null`; a field whose
    validator refuses null must not offer it.
    """
    options = schema.pop("anyOf", None)
    if isinstance(options, list):
        rest = [option for option in options if option != {"type": "null"}]
        if len(rest) == 1 and isinstance(rest[0], dict):
            for key, value in rest[0].items():
                schema.setdefault(key, value)
        else:
            schema["anyOf"] = rest
    if "default" in schema and schema["default"] is None:
        del schema["default"]


class OutModel(BaseModel):
    """Response bodies."""

    model_config = ConfigDict(extra="forbid")


class ProblemDetail(OutModel):
    """One thing wrong with a template: in which language variant, subject or body, and where."""

    language: str
    field: str
    line: int | None = None
    message: str


class ErrorDetail(OutModel):
    code: str
    message: str
    field: str | None = None
    problems: list[ProblemDetail] | None = Field(
        None, description="for `invalid_template`: every problem found, with the template line"
    )


class ErrorResponse(OutModel):
    error: ErrorDetail


class ApiError(Exception):
    """An answer other than success, with a stable code and a message a person can act on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        problems: list[ProblemDetail] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.problems = problems

    def response(self) -> web.Response:
        body = ErrorResponse(
            error=ErrorDetail(code=self.code, message=self.message, field=self.field, problems=self.problems)
        )
        response = web.Response(
            body=body.model_dump_json(exclude_none=True), status=self.status, content_type="application/json"
        )
        if self.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="aggregator"'
        return response


def not_found(what: str, record_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} with id {record_id!r}")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the token's user, role and workspace."""

    token_id: str
    workspace_id: str
    user_id: str
    role: Role


@dataclass(slots=True)
class Call:
    """One validated request, as a handler receives it."""

    request: web.Request
    caller: Caller
    query: BaseModel | None = None
    body: BaseModel | None = None

    @property
    def store(self) -> Store:
        return self.request.app[STORE]

    @property
    def bus(self) -> Bus:
        return self.request.app[BUS]

    @property
    def channels(self) -> ChannelManager:
        return self.request.app[CHANNELS]

    @property
    def attachments(self) -> AttachmentStore:
        return self.request.app[ATTACHMENTS]

    async def enqueue_outbox(self, outbox_id: str) -> None:
        enqueue = self.request.app.get(ENQUEUE_OUTBOX)
        if enqueue is not None:
            await enqueue(outbox_id)

    @property
    def workspace_id(self) -> str:
        return self.caller.workspace_id

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def query_as(self, model: type[M]) -> M:
        assert isinstance(self.query, model)
        return self.query

    def body_as(self, model: type[M]) -> M:
        assert isinstance(self.body, model)
        return self.body


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    roles: frozenset[Role] | None
    status: int
    response: type[BaseModel] | None
    query: type[ApiModel] | None = None
    body: type[ApiModel] | None = None
    # A response that is not JSON (a file, an event stream): its media type, and the schema documented
    # for it (for an event stream, that of each event, as OpenAPI 3.2's itemSchema does).
    content_type: str | None = None
    content_schema: dict[str, Any] | None = None
    # The stream: browsers' EventSource and WebSocket cannot set headers, so a query token is allowed.
    query_token: bool = False
    errors: tuple[int, ...] = ()
    description: str = ""

    @property
    def full_path(self) -> str:
        return PREFIX + self.path

    @property
    def path_regex(self) -> re.Pattern[str]:
        return re.compile(re.sub(r"\\{\w+\\}", "[^/]+", re.escape(self.full_path)))

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def error_statuses(self) -> list[int]:
        statuses = set(self.errors)
        if self.query is not None or self.body is not None or self.path_params:
            statuses.add(400)
        if self.roles is not None:
            statuses.add(401)
            if self.roles != ALL_ROLES:
                statuses.add(403)
        if self.path_params:
            statuses.add(404)
        if self.body is not None:
            statuses.add(413)
        return sorted(statuses)


def json_response(model: BaseModel | None, status: int = 200) -> web.Response:
    if model is None:
        return web.Response(status=status)
    return web.Response(body=model.model_dump_json(), status=status, content_type="application/json")


def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The values a cursor carries; 400 naming `cursor` when it was not made by us."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, TypeError):
        values = None
    if (
        not isinstance(values, list)
        or len(values) != arity
        or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values)
    ):
        raise ApiError(
            400, "invalid_cursor", "cursor is not one this API gave out; start again without it", "cursor"
        )
    return values


def invalid_cursor() -> ApiError:
    return ApiError(
        400, "invalid_cursor", "cursor is not one this API gave out; start again without it", "cursor"
    )


def time_cursor(at: datetime, record_id: str) -> str:
    """The cursor of a keyset position (a time, then an id to break ties)."""
    return encode_cursor([format_time(at), record_id])


def parse_time_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The keyset position a `time_cursor` carries (None for no cursor); 400 naming `cursor` otherwise."""
    if cursor is None:
        return None
    at, record_id = decode_cursor(cursor, 2)
    try:
        parsed = datetime.fromisoformat(str(at))
    except ValueError:
        raise invalid_cursor() from None
    if parsed.tzinfo is None:
        raise invalid_cursor()
    return parsed, str(record_id)


def _validation_error(exc: ValidationError, where: str) -> ApiError:
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"])
    field_name = loc or where
    if error["type"] == "extra_forbidden":
        return ApiError(400, "unknown_field", f"{field_name}: unknown field", field_name)
    if error["type"] == "missing":
        return ApiError(400, "missing_field", f"{field_name}: required", field_name)
    # A validator's own words, without pydantic's "Value error, " in front of them.
    message = str(error["msg"]).removeprefix("Value error, ")
    return ApiError(400, "invalid_field", f"{field_name}: {message}", field_name)


def parse_json_body(raw: bytes) -> Any:
    """The body as JSON; None when it is empty."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, refusing more than `limit` bytes before reading them all."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Authenticator:
    """Bearer tokens, checked against their hashes in SQL on every request (revocation is immediate)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._touched: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def caller(self, request: web.Request, query_token: bool) -> Caller:
        header = request.headers.get("Authorization")
        token: str | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(401, "token_invalid", "Authorization must be 'Bearer <token>'")
            token = value.strip()
        elif query_token:
            token = request.query.get("access_token") or None
        if token is None:
            raise ApiError(
                401, "token_missing", "this endpoint needs a token: send 'Authorization: Bearer <token>'"
            )
        info: TokenInfo | None = await self.store.authenticate(token)
        if info is None or info.user_id is None:
            raise ApiError(401, "token_invalid", "the token is unknown or revoked")
        self._touch(info.id)
        return Caller(info.id, info.workspace_id, info.user_id, info.role)

    def _touch(self, token_id: str) -> None:
        now = time.monotonic()
        if now - self._touched.get(token_id, -TOKEN_TOUCH_SECONDS) < TOKEN_TOUCH_SECONDS:
            return
        self._touched[token_id] = now
        task = asyncio.create_task(self._write_touch(token_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, _app: web.Application | None = None) -> None:
        """Let the last-use writes in flight finish before the store closes."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write_touch(self, token_id: str) -> None:
        try:
            await self.store.touch_token(token_id)
        except Exception:
            log.exception("recording the use of token %s failed", token_id)


AUTH = web.AppKey("api_auth", Authenticator)


@dataclass
class Api:
    """The endpoint declarations of /api/v1."""

    title: str = "aggregator API"
    version: str = "1"
    endpoints: list[Endpoint] = field(default_factory=list)
    _document: dict[str, Any] | None = None

    def endpoint(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        roles: frozenset[Role] | None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        query: type[ApiModel] | None = None,
        body: type[ApiModel] | None = None,
        content_type: str | None = None,
        content_schema: dict[str, Any] | None = None,
        query_token: bool = False,
        errors: tuple[int, ...] = (),
        description: str = "",
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method.upper(),
                    path,
                    handler,
                    summary,
                    tag,
                    roles,
                    status,
                    response,
                    query,
                    body,
                    content_type,
                    content_schema,
                    query_token,
                    errors,
                    description,
                )
            )
            self._document = None
            return handler

        return register

    def include(self, other: Api) -> None:
        self.endpoints.extend(other.endpoints)
        self._document = None

    def install(self, app: web.Application) -> None:
        """Add the routes; the app must carry STORE (and what the handlers use: BUS, CHANNELS ...)."""
        app[AUTH] = auth = Authenticator(app[STORE])
        app.on_cleanup.append(auth.close)
        app[API] = self
        for endpoint in self.endpoints:
            app.router.add_route(endpoint.method, endpoint.full_path, _wrap(endpoint))
        app.router.add_route("*", PREFIX + "/{tail:.*}", _unknown)

    def openapi(self) -> dict[str, Any]:
        if self._document is None:
            self._document = build_openapi(self)
        return self._document


API = web.AppKey("api", Api)


async def _unknown(request: web.Request) -> web.StreamResponse:
    allowed = sorted(
        endpoint.method
        for endpoint in request.app[API].endpoints
        if endpoint.path_regex.fullmatch(request.path)
    )
    if allowed:
        response = ApiError(
            405, "method_not_allowed", f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        ).response()
        response.headers["Allow"] = ", ".join(allowed)
        return response
    return ApiError(404, "unknown_endpoint", f"no endpoint {request.method} {request.path}").response()


def _wrap(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            if endpoint.roles is None:
                caller = Caller("", "", "", Role.AGENT)
            else:
                caller = await request.app[AUTH].caller(request, endpoint.query_token)
                if caller.role not in endpoint.roles:
                    allowed = " or ".join(sorted(role.value for role in endpoint.roles))
                    raise ApiError(
                        403,
                        "forbidden",
                        f"this needs the {allowed} role; the token has the {caller.role} role",
                    )
            call = Call(request, caller)
            if endpoint.query is not None:
                values = {
                    k: v
                    for k, v in request.query.items()
                    if not (endpoint.query_token and k == "access_token")
                }
                try:
                    call.query = endpoint.query.model_validate(values)
                except ValidationError as exc:
                    raise _validation_error(exc, "query") from exc
            else:
                unknown = [k for k in request.query if k != "access_token" or not endpoint.query_token]
                if unknown:
                    raise ApiError(400, "unknown_field", f"{unknown[0]}: unknown query parameter", unknown[0])
            if endpoint.body is not None:
                raw = await read_body(request)
                payload = parse_json_body(raw)
                if payload is None:
                    raise ApiError(400, "missing_body", "this request needs a JSON object as its body")
                if not isinstance(payload, dict):
                    raise ApiError(400, "invalid_json", "the body must be a JSON object")
                try:
                    # Strict, as JSON: a wrong type is an error, not converted (0 is no boolean, "5"
                    # and true are no integers, a number is no date-time), as the document says.
                    call.body = endpoint.body.model_validate_json(raw, strict=True)
                except ValidationError as exc:
                    raise _validation_error(exc, "body") from exc
            return await endpoint.handler(call)
        except ApiError as exc:
            return exc.response()
        except NotFound as exc:
            return ApiError(404, "not_found", str(exc)).response()
        except Invalid as exc:
            return ApiError(400, "invalid_field", f"{exc.field}: {exc}", exc.field).response()
        except Conflict as exc:
            return ApiError(409, "conflict", str(exc)).response()

    handle.__name__ = endpoint.operation_id
    return handle


# --------------------------------------------------------------------------------------------------
# The OpenAPI document


def _strip_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is optional by not being sent; `null` is not a value a query string can carry."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [s for s in options if s != {"type": "null"}]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            merged.update(rest[0])
            return merged
    return schema


def build_openapi(api: Api) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(ErrorResponse, "serialization")]
    for endpoint in api.endpoints:
        if endpoint.body is not None:
            models.append((endpoint.body, "validation"))
        if endpoint.query is not None:
            models.append((endpoint.query, "validation"))
        if endpoint.response is not None:
            models.append((endpoint.response, "serialization"))
    keys, top = models_json_schema(list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(keys[(model, mode)])  # type: ignore[index]

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        target = schema.get("$ref")
        if isinstance(target, str):
            return dict(schemas[target.rsplit("/", 1)[-1]])
        return schema

    paths: dict[str, dict[str, Any]] = {}
    error_ref = ref(ErrorResponse, "serialization")
    for endpoint in api.endpoints:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in endpoint.path_params
        ]
        if endpoint.query is not None:
            query_schema = resolved(ref(endpoint.query, "validation"))
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                prop = _strip_null(dict(prop))
                description = prop.pop("description", None)
                prop.pop("title", None)
                parameter: dict[str, Any] = {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": prop,
                }
                if description:
                    parameter["description"] = description
                parameters.append(parameter)
        if endpoint.query_token:
            parameters.append(
                {
                    "name": "access_token",
                    "in": "query",
                    "required": False,
                    "description": "the bearer token, for clients that cannot set the Authorization header",
                    "schema": {"type": "string"},
                }
            )
        responses: dict[str, Any] = {}
        success: dict[str, Any] = {"description": "success"}
        if endpoint.content_type is not None:
            schema = endpoint.content_schema if endpoint.content_schema is not None else {"type": "string"}
            success["content"] = {endpoint.content_type: {"schema": schema}}
        elif endpoint.response is not None:
            success["content"] = {"application/json": {"schema": ref(endpoint.response, "serialization")}}
        responses[str(endpoint.status)] = success
        for status in endpoint.error_statuses():
            responses[str(status)] = {
                "description": _ERROR_DESCRIPTIONS.get(status, "error"),
                "content": {"application/json": {"schema": error_ref}},
            }
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
            "parameters": parameters,
            "responses": responses,
        }
        if endpoint.description:
            operation["description"] = endpoint.description
        if endpoint.roles is None:
            operation["security"] = []
        else:
            operation["x-roles"] = sorted(role.value for role in endpoint.roles)
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(endpoint.body, "validation")}},
            }
        paths.setdefault(endpoint.full_path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": api.title,
            "version": api.version,
            "description": (
                "The unified inbox. Every request but this document carries 'Authorization: Bearer "
                '<token>\'; errors are {"error": {"code", "message", "field"?}}. Lists are '
                "cursor-paginated: pass next_cursor back as cursor until it is null. JSON bodies are at "
                f"most {MAX_BODY_BYTES} bytes."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


_ERROR_DESCRIPTIONS = {
    400: "invalid request: the error names the field",
    401: "no token, or an unknown or revoked one",
    403: "the token's role may not do this",
    404: "no such record in this workspace",
    409: "conflicts with an existing record",
    413: "the body is over the size limit",
    503: "unavailable for now; retry later",
}
