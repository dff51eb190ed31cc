"""Replies made from templates: choose the language, fill in the conversation, render for the channel.

One template source becomes what each channel takes: plain text always, HTML for email, MarkdownV2
for a Telegram account set to format that way. The agent's reply, the preview and the automatic
replies all come through `compose`, so what the preview shows is what the customer gets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggregator.model import utcnow
from aggregator.store import Store
from aggregator.store.replies import ReplyContext
from aggregator.store.templates import TemplateRecord
from aggregator.templates import (
    Format,
    Problem,
    Rendered,
    TemplateInvalid,
    Variant,
    build_context,
    choose_variant,
    render,
)
from aggregator.workspace import WorkspaceSettings
from channels.base import Capabilities, Formatting, Registry, UnknownChannelKind

ALL_FORMATS = frozenset(Format)


@dataclass(frozen=True, slots=True)
class Composed:
    template: TemplateRecord
    context: ReplyContext
    rendered: Rendered
    # Where the language came from: "request", "conversation", "contact" or "workspace default".
    language_from: str
    formats: frozenset[Format]  # what the conversation's channel is sent

    def message_fields(self) -> tuple[str, str | None, str | None, dict[str, Any]]:
        """(text, html, subject, extra) of the stored reply: only what its channel sends."""
        extra: dict[str, Any] = {"template": {"id": self.template.id, "language": self.rendered.language}}
        if Format.MARKDOWN_V2 in self.formats and self.rendered.markdown_v2 is not None:
            extra["markdown_v2"] = self.rendered.markdown_v2
        html = self.rendered.html if Format.HTML in self.formats else None
        return self.rendered.text, html, self.rendered.subject, extra


def channel_formats(capabilities: Capabilities, config: Mapping[str, Any]) -> frozenset[Format]:
    """The formats a channel account is sent, besides plain text.

    Its configured `formatting` when it has one (Telegram: plain or markdownv2), else every rich
    format its kind takes (email: HTML).
    """
    rich = {Format(f.value) for f in capabilities.formatting if f is not Formatting.PLAIN}
    chosen = config.get("formatting")
    if isinstance(chosen, str):
        return frozenset(rich & {Format(chosen)} if chosen in {f.value for f in Format} else set())
    return frozenset(rich)


def _variants(template: TemplateRecord) -> list[Variant]:
    return [
        Variant(language=str(v["language"]), body=str(v["body"]), subject=v.get("subject"))
        for v in template.variants
    ]


def _wanted(requested: str | None, context: ReplyContext) -> tuple[list[str | None], list[str]]:
    sources: list[tuple[str | None, str]] = [
        (requested, "request"),
        (context.language, "conversation"),
        (context.contact_language, "contact"),
    ]
    return [tag for tag, _ in sources], [name for _, name in sources]


def _source_of(variant: Variant, wanted: Sequence[str | None], names: Sequence[str]) -> str:
    base = variant.language.replace("_", "-").lower().split("-")[0]
    for tag, name in zip(wanted, names, strict=True):
        if tag and tag.replace("_", "-").lower().split("-")[0] == base:
            return name
    return "workspace default"


async def compose(
    store: Store,
    registry: Registry,
    workspace_id: str,
    conversation_id: str,
    template_ref: str,
    *,
    variables: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    language: str | None = None,
    order: Mapping[str, Any] | None = None,
    formats: frozenset[Format] | None = None,
    now: datetime | None = None,
    settings: WorkspaceSettings | None = None,
) -> Composed:
    """Render template `template_ref` (id or shortcode) for the conversation.

    The language: `language` when given, else the conversation's, else the contact's, else the
    workspace default, each falling back variant by variant (de-AT -> de). `formats` renders these as
    well as the channel's own (the preview asks for all). Raises NotFound, and TemplateInvalid when
    the template cannot be rendered here (a `vars.<name>` not given, an `order` the conversation has
    not got) or the text is too long for a channel that cannot split it.
    """
    context = await store.reply_context(workspace_id, conversation_id, user_id)
    template = await store.get_template(workspace_id, template_ref)
    variants = _variants(template)
    wanted, names = _wanted(language, context)
    variant, explanation = choose_variant(variants, wanted, context.workspace.default_language)
    try:
        capabilities = registry.get(context.channel_kind).capabilities
    except UnknownChannelKind:
        capabilities = Capabilities()
    targets = channel_formats(capabilities, context.channel_config)
    # Given by the automatic replies: the settings their decision was made with (hours, time zone).
    settings = settings or WorkspaceSettings.load(context.workspace.settings)
    now = now or utcnow()
    hours = settings.hours
    is_open = hours.is_open(now) if hours is not None else True
    opens_at = None if hours is None or is_open else hours.next_open(now)
    agent = None
    if context.agent_name is not None:
        agent = {"name": context.agent_name, "signature": context.agent_signature}
    try:
        values = build_context(
            contact={
                "name": context.contact_name,
                "email": context.contact_email,
                "language": context.contact_language,
            },
            conversation={
                "id": context.conversation_id,
                "subject": context.subject,
                "channel": context.channel_kind,
            },
            agent=agent,
            workspace={
                "name": context.workspace.name,
                "timezone": settings.timezone,
                "is_open": is_open,
                "opens_at": opens_at,
            },
            order=order,
            now=now,
            language=variant.language,
            variables=variables,
        )
    except ValueError as exc:
        raise TemplateInvalid([Problem(variant.language, "body", None, str(exc))]) from None
    rendered = render(variant, values, targets | (formats or frozenset()), explanation=explanation)
    limit = capabilities.max_text_length
    if limit is not None and not capabilities.can_split and len(rendered.text) > limit:
        raise TemplateInvalid(
            [
                Problem(
                    variant.language,
                    "body",
                    None,
                    f"renders to {len(rendered.text)} characters; {context.channel_kind} takes at most {limit} "
                    "and cannot split a message: shorten the template",
                )
            ]
        )
    return Composed(template, context, rendered, _source_of(variant, wanted, names), targets)
