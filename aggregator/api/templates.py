"""Reply templates: CRUD (validated when saved), the variables they may use, and previews."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StrictFloat, StrictInt, StringConstraints, field_validator

from aggregator.api.framework import (
    ADMIN,
    STAFF,
    Api,
    ApiError,
    ApiModel,
    Call,
    OutModel,
    ProblemDetail,
    json_response,
    not_null,
)
from aggregator.replies import ALL_FORMATS, compose
from aggregator.store.templates import TemplateChange, TemplateRecord
from aggregator.templates import (
    FILTERS,
    VARIABLES,
    Problem,
    TemplateInvalid,
    Variant,
    required_vars,
    validate,
)
from aggregator.workspace import WorkspaceSettings

api = Api()

MAX_VARIANTS = 50
MAX_BODY = 50_000
MAX_VARIABLES = 50

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Shortcode = Annotated[
    str,
    StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$|^$"),
    Field(description='what agents type to use it (letters, digits, `_ . -`); "" removes it'),
]
Category = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]
LanguageTag = Annotated[
    str,
    StringConstraints(max_length=35, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$"),
    Field(description="a language tag such as `de`, `de-AT` or `pt-BR`"),
]
# Strict: JSON true is not the number 1 (a template prints what it is given).
VariableValue = Annotated[str, StringConstraints(max_length=10_000)] | StrictInt | StrictFloat
Variables = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")],
        VariableValue,
    ],
    Field(max_length=MAX_VARIABLES, description="values for `{{ vars.<name> }}` (text or numbers)"),
]


class VariantIn(ApiModel):
    language: LanguageTag
    subject: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        None, description="email subject (Jinja2, plain text); other channels ignore it"
    )
    body: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY)] = Field(
        description="Markdown with Jinja2 `{{ ... }}`: rendered as plain text, HTML or MarkdownV2 per channel"
    )


class VariantOut(OutModel):
    language: str
    subject: str | None
    body: str


class TemplateOut(OutModel):
    id: str
    name: str
    shortcode: str | None
    category: str | None
    variants: list[VariantOut]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: TemplateRecord) -> TemplateOut:
        return cls(
            id=record.id,
            name=record.name,
            shortcode=record.shortcode,
            category=record.category,
            variants=[
                VariantOut(language=v["language"], subject=v.get("subject"), body=v["body"])
                for v in record.variants
            ],
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class TemplateList(OutModel):
    items: list[TemplateOut]


Variants = Annotated[list[VariantIn], Field(min_length=1, max_length=MAX_VARIANTS)]


class TemplateCreate(ApiModel):
    name: Name
    shortcode: Shortcode | None = None
    category: Category | None = None
    variants: Variants


class TemplatePatch(ApiModel):
    name: Name | None = Field(None, json_schema_extra=not_null)
    shortcode: Shortcode | None = Field(None, json_schema_extra=not_null)
    category: Category | None = Field(None, json_schema_extra=not_null, description='"" removes it')
    variants: Variants | None = Field(None, json_schema_extra=not_null, description="replaces all variants")

    @field_validator("name", "shortcode", "category", "variants")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


class TemplateQuery(ApiModel):
    category: str | None = Field(None, max_length=100)
    q: str | None = Field(None, max_length=200, description="part of the name or shortcode")


class VariableOut(OutModel):
    name: str
    description: str


class VariablesOut(OutModel):
    variables: list[VariableOut]
    filters: list[VariableOut]


class RenderRequest(ApiModel):
    conversation_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    variables: Variables = Field(default_factory=dict)
    language: LanguageTag | None = Field(
        None, description="render this language instead of the conversation's (still falling back)"
    )


class RenderedOut(OutModel):
    template_id: str
    language: str = Field(description="the variant used")
    language_from: str = Field(
        description="what chose it: `request`, `conversation`, `contact` or `workspace default`"
    )
    explanation: str = Field(description="each language tried and what was used, for the agent to see")
    subject: str | None
    text: str = Field(description="plain text (every channel has it)")
    html: str = Field(description="sanitised HTML (what email sends)")
    markdownv2: str = Field(description="Telegram MarkdownV2, escaped")
    channel_formats: list[str] = Field(
        description="what this conversation's channel is sent besides `text`: `html`, `markdownv2` or none"
    )


def problems_of(problems: Sequence[Problem]) -> list[ProblemDetail]:
    return [
        ProblemDetail(language=p.language, field=p.field, line=p.line, message=p.message) for p in problems
    ]


def invalid(exc: TemplateInvalid, what: str = "the template") -> ApiError:
    return ApiError(
        422, "invalid_template", f"{what} has problems: {exc}", "variants", problems_of(exc.problems)
    )


def _checked(variants: Sequence[VariantIn]) -> list[dict[str, Any]]:
    languages = [v.language.replace("_", "-").lower() for v in variants]
    twice = sorted({tag for tag in languages if languages.count(tag) > 1})
    if twice:
        raise ApiError(
            400, "invalid_field", f"variants: more than one variant for {', '.join(twice)}", "variants"
        )
    parsed = [Variant(language=v.language, body=v.body, subject=v.subject) for v in variants]
    problems = validate(parsed)
    if problems:
        raise invalid(TemplateInvalid(problems))
    return [{"language": v.language, "subject": v.subject, "body": v.body} for v in variants]


@api.endpoint(
    "GET",
    "/templates",
    summary="Reply templates",
    tag="templates",
    roles=STAFF,
    query=TemplateQuery,
    response=TemplateList,
)
async def list_templates(call: Call) -> web.StreamResponse:
    query = call.query_as(TemplateQuery)
    records = await call.store.list_templates(call.workspace_id, category=query.category, q=query.q)
    return json_response(TemplateList(items=[TemplateOut.from_record(r) for r in records]))


@api.endpoint(
    "GET",
    "/template-variables",
    summary="What a template may use: variables and filters",
    tag="templates",
    roles=STAFF,
    response=VariablesOut,
)
async def template_variables(call: Call) -> web.StreamResponse:
    return json_response(
        VariablesOut(
            variables=[VariableOut(name=k, description=v) for k, v in VARIABLES.items()],
            filters=[VariableOut(name=k, description=v) for k, v in FILTERS.items()],
        )
    )


@api.endpoint(
    "GET",
    "/templates/{id}",
    summary="One template, by id or shortcode",
    tag="templates",
    roles=STAFF,
    response=TemplateOut,
)
async def get_template(call: Call) -> web.StreamResponse:
    return json_response(
        TemplateOut.from_record(await call.store.get_template(call.workspace_id, call.path("id")))
    )


@api.endpoint(
    "POST",
    "/templates",
    summary="Create a template (validated: syntax errors and unknown variables are refused with the line)",
    tag="templates",
    roles=ADMIN,
    body=TemplateCreate,
    response=TemplateOut,
    status=201,
    errors=(409, 422),
)
async def create_template(call: Call) -> web.StreamResponse:
    body = call.body_as(TemplateCreate)
    variants = _checked(body.variants)
    record = await call.store.create_template(
        call.workspace_id,
        body.name,
        variants,
        shortcode=body.shortcode or None,
        category=body.category or None,
    )
    return json_response(TemplateOut.from_record(record), status=201)


@api.endpoint(
    "PATCH",
    "/templates/{id}",
    summary="Rename, re-categorise or replace the variants of a template",
    tag="templates",
    roles=ADMIN,
    body=TemplatePatch,
    response=TemplateOut,
    errors=(409, 422),
)
async def patch_template(call: Call) -> web.StreamResponse:
    body = call.body_as(TemplatePatch)
    current = await call.store.get_template(call.workspace_id, call.path("id"))
    variants = _checked(body.variants) if body.variants is not None else None
    if body.variants is not None:
        needed = list(
            dict.fromkeys(
                name
                for v in body.variants
                for name in required_vars(Variant(language=v.language, body=v.body, subject=v.subject))
            )
        )
        if needed:
            # Nobody fills in `vars` for an automatic reply: it would never be sent again.
            names = ", ".join(f"vars.{name}" for name in needed)
            action = f"make it use {names} (an automatic reply cannot fill them in)"
            _not_in_use(await _settings(call), current, action)
    if body.shortcode is not None and current.shortcode and body.shortcode != current.shortcode:
        # Only a use by the old shortcode breaks; one by id still finds the template.
        _not_in_use(await _settings(call), current, "change its shortcode", by_id=False)
    change = TemplateChange(
        name=body.name, shortcode=body.shortcode, category=body.category, variants=variants
    )
    record = await call.store.update_template(call.workspace_id, current.id, change)
    return json_response(TemplateOut.from_record(record))


async def _settings(call: Call) -> WorkspaceSettings:
    return WorkspaceSettings.load(await call.store.workspace_settings(call.workspace_id))


def _not_in_use(
    settings: WorkspaceSettings, record: TemplateRecord, action: str, *, by_id: bool = True
) -> None:
    refs = {*([record.id] if by_id else []), *([record.shortcode] if record.shortcode else [])}
    uses = [
        f"auto_replies.acknowledge.{channel}"
        for channel, rule in settings.auto_replies.acknowledge.items()
        if rule.template in refs
    ]
    if settings.auto_replies.out_of_hours.template in refs:
        uses.append("auto_replies.out_of_hours")
    if uses:
        raise ApiError(
            409,
            "template_in_use",
            f"cannot {action}: the workspace's {', '.join(uses)} uses template {record.name!r}; "
            "point it at another template first (PATCH /api/v1/workspace)",
        )


@api.endpoint(
    "DELETE",
    "/templates/{id}",
    summary="Delete a template (refused while an automatic reply uses it)",
    tag="templates",
    roles=ADMIN,
    status=204,
    errors=(409,),
)
async def delete_template(call: Call) -> web.StreamResponse:
    record = await call.store.get_template(call.workspace_id, call.path("id"))
    _not_in_use(await _settings(call), record, "delete it")
    await call.store.delete_template(call.workspace_id, record.id)
    return web.Response(status=204)


@api.endpoint(
    "POST",
    "/templates/{id}/render",
    summary="Preview a template for a conversation: the language chosen and the text per format",
    tag="templates",
    roles=STAFF,
    body=RenderRequest,
    response=RenderedOut,
    errors=(422,),
    description="Renders exactly as a reply would (same language choice, same variables), without sending "
    "anything. 422 `invalid_template` when it cannot be rendered here, e.g. a `vars.<name>` not given.",
)
async def render_template(call: Call) -> web.StreamResponse:
    body = call.body_as(RenderRequest)
    try:
        composed = await compose(
            call.store,
            call.channels.registry,
            call.workspace_id,
            body.conversation_id,
            call.path("id"),
            variables=body.variables,
            user_id=call.caller.user_id,
            language=body.language,
            formats=ALL_FORMATS,
        )
    except TemplateInvalid as exc:
        raise invalid(exc, "the template, rendered for this conversation,") from exc
    rendered = composed.rendered
    return json_response(
        RenderedOut(
            template_id=composed.template.id,
            language=rendered.language,
            language_from=composed.language_from,
            explanation=rendered.explanation,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html or "",
            markdownv2=rendered.markdown_v2 or "",
            channel_formats=sorted(f.value for f in composed.formats),
        )
    )
