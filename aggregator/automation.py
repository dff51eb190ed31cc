"""Automation rules: on an event, when every condition holds, the actions run in order.

Rules of one event run in `position` order, then by name, each seeing what those before it did (the
conversation is read again for every rule). A rule's changes are published as one
conversation.updated whose `rule_chain` lists the rules that led to it: a rule never fires on an
event its own actions caused, and a chain of MAX_CHAIN rules stops. Each firing is claimed in
rule_firings (the event's id; for no_reply the quiet stretch's start) before its actions run, so a
rule fires once per occasion, and is written to the conversation's audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from aggregator.language import base_language
from aggregator.model import Event, utcnow
from aggregator.replies import compose
from aggregator.routing import conversation_hours
from aggregator.secrets import SecretKeyError
from aggregator.store import Conflict, Invalid, NotFound, Store
from aggregator.store.inbox import ConversationChange
from aggregator.store.rules import WEBHOOK_SECRET_STORED, ConversationFacts, RuleRecord
from aggregator.templates import TemplateInvalid
from aggregator.workspace import SettingsCache
from channels.base import Registry

if TYPE_CHECKING:
    from aggregator.config import Settings

log = logging.getLogger(__name__)

Enqueue = Callable[[str], Awaitable[None]]

MAX_CHAIN = 5
TIME_CHECK_SECONDS = 60.0
RECOVER_SECONDS = 600.0
WEBHOOK_TIMEOUT_SECONDS = 10.0
MAX_PATTERN = 500
# A pattern runs on at most this much text: Python's re has no time limit.
MAX_MATCHED_TEXT = 20_000
SIGNATURE_HEADER = "X-Aggregator-Signature"
AUTOMATIC_FLAGS = frozenset({"auto_submitted", "bulk", "bounce"})

RuleEventName = Literal[
    "conversation.created",
    "message.received",
    "conversation.updated",
    "sla.warning",
    "sla.breached",
    "no_reply",
]
PriorityName = Literal["low", "normal", "high", "urgent"]
Text = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Ref = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Conditions ---------------------------------------------------------------------------------------


class ChannelCondition(_Part):
    type: Literal["channel"]
    channel: Ref = Field(description="a channel account's id or name, or a channel kind (email, api ...)")


class LanguageCondition(_Part):
    type: Literal["language"]
    language: Annotated[str, StringConstraints(min_length=2, max_length=35)] = Field(
        description="matches by base language: `de` matches de-AT"
    )


class TextContainsCondition(_Part):
    type: Literal["text_contains"]
    text: Text = Field(description="in the latest customer message, ignoring case")


class TextMatchesCondition(_Part):
    type: Literal["text_matches"]
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATTERN)] = Field(
        description="a Python regular expression searched in the latest customer message (ignoring case)"
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
        return value


class LabelCondition(_Part):
    type: Literal["label"]
    label: Label
    has: bool = Field(True, description="false: the conversation must not have the label")


class PriorityCondition(_Part):
    type: Literal["priority"]
    priority: PriorityName


class ContactFieldCondition(_Part):
    type: Literal["contact_field"]
    field: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="`name`, `email`, or an attribute of the contact"
    )
    equals: Annotated[str, StringConstraints(max_length=1000)] | None = None
    contains: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _one(self) -> ContactFieldCondition:
        if (self.equals is None) == (self.contains is None):
            raise ValueError("give one of equals or contains")
        return self


class BusinessHoursCondition(_Part):
    type: Literal["business_hours"]
    when: Literal["inside", "outside"]
    calendar_id: Ref | None = Field(None, description="a calendar; none: the workspace's `hours`")


class AssigneeCondition(_Part):
    type: Literal["assignee"]
    assignee: Ref = Field(description="`none`, `any`, or a user id")


Condition = Annotated[
    ChannelCondition
    | LanguageCondition
    | TextContainsCondition
    | TextMatchesCondition
    | LabelCondition
    | PriorityCondition
    | ContactFieldCondition
    | BusinessHoursCondition
    | AssigneeCondition,
    Field(discriminator="type"),
]


# Actions ------------------------------------------------------------------------------------------


class AssignAgentAction(_Part):
    type: Literal["assign_agent"]
    user_id: Ref = Field(description="a user's id or email")


class AssignTeamAction(_Part):
    type: Literal["assign_team"]
    team_id: Ref = Field(description="a team's id or name")


class AddLabelAction(_Part):
    type: Literal["add_label"]
    label: Label


class RemoveLabelAction(_Part):
    type: Literal["remove_label"]
    label: Label


class SetPriorityAction(_Part):
    type: Literal["set_priority"]
    priority: PriorityName


class SetSlaPolicyAction(_Part):
    type: Literal["set_sla_policy"]
    policy_id: Ref


class ReplyTemplateAction(_Part):
    type: Literal["reply_template"]
    template: Ref = Field(description="a template's id or shortcode; sent as an automatic reply")


class AddNoteAction(_Part):
    type: Literal["add_note"]
    text: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


class SnoozeAction(_Part):
    type: Literal["snooze"]
    hours: float = Field(gt=0, le=24 * 366)


class ResolveAction(_Part):
    type: Literal["resolve"]


class WebhookAction(_Part):
    type: Literal["webhook"]
    url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://[^\s]+$")]
    secret: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None,
        description=f"signs the body: {SIGNATURE_HEADER}: sha256=<HMAC-SHA256 hex>. Write-only: stored "
        "encrypted, answers show `secret_set` instead. A PATCH of `actions` that leaves it out keeps the "
        "secret of the rule's webhook action with the same url; null removes it",
    )


class NotifyAction(_Part):
    type: Literal["notify"]
    users: Annotated[list[Ref], Field(min_length=1, max_length=50)] = Field(
        description='user ids, or "team_lead" (the lead of the conversation\'s team)'
    )
    text: Text


Action = Annotated[
    AssignAgentAction
    | AssignTeamAction
    | AddLabelAction
    | RemoveLabelAction
    | SetPriorityAction
    | SetSlaPolicyAction
    | ReplyTemplateAction
    | AddNoteAction
    | SnoozeAction
    | ResolveAction
    | WebhookAction
    | NotifyAction,
    Field(discriminator="type"),
]

Conditions = Annotated[list[Condition], Field(max_length=50)]
Actions = Annotated[list[Action], Field(min_length=1, max_length=50)]


class NoReplyOptions(_Part):
    hours: float = Field(gt=0, le=24 * 3660)
    side: Literal["customer", "agent"] = Field(
        description="customer: our message had no answer for `hours`; agent: the customer's had none"
    )


def check_event_options(event: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options as stored; ValueError saying what the event takes."""
    if event == "no_reply":
        try:
            return NoReplyOptions.model_validate(options).model_dump()
        except ValueError as exc:
            raise ValueError(
                'no_reply needs event_options {"hours": N (> 0), "side": "customer" or "agent"}: '
                + str(exc).splitlines()[-1].strip()
            ) from None
    if options:
        raise ValueError(f"{event} takes no event_options")
    return {}


class RuleDefinition(BaseModel):
    """A rule as the API and the config file give it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    position: int = Field(0, ge=-1_000_000, le=1_000_000, description="lower runs first; ties by name")
    enabled: bool = True
    event: RuleEventName
    event_options: dict[str, Any] = Field(
        default_factory=dict, description='no_reply: {"hours": N, "side": "customer" | "agent"}'
    )
    conditions: Conditions = Field(default_factory=list, description="all must hold")
    actions: Actions = Field(description="run in order")

    @model_validator(mode="after")
    def _options(self) -> RuleDefinition:
        self.event_options = check_event_options(self.event, self.event_options)
        return self

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ConfigRule(RuleDefinition):
    workspace: str | None = Field(None, description="the workspace's name; none: the default workspace")


async def sync_config_rules(
    store: Store, workspace_id: str, rules: Sequence[RuleDefinition], *, file: str | None = None
) -> list[RuleRecord]:
    """Replace the workspace's config rules with `rules` (at start)."""
    names = [rule.name for rule in rules]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise Conflict(f"the config file has more than one rule named {', '.join(map(repr, twice))}")
    return await store.replace_config_rules(
        workspace_id, [rule.stored() for rule in rules], utcnow(), file=file
    )


async def load_config_rules(store: Store, settings: Settings) -> None:
    """The config file's rules, each into its workspace (the default one included, emptied when the
    file has none for it)."""
    by_workspace: dict[str, list[RuleDefinition]] = {settings.default_workspace: []}
    for rule in settings.rules:
        by_workspace.setdefault(rule.workspace or settings.default_workspace, []).append(rule)
    file = str(settings.config_file) if settings.config_file is not None else None
    for name, listed in by_workspace.items():
        try:
            workspace = await store.get_workspace_by_name(name)
        except NotFound:
            from aggregator.config import ConfigError  # here: the config module imports this one

            rule_names = ", ".join(repr(rule.name) for rule in listed)
            raise ConfigError(
                f"rules {rule_names} of {file or 'the settings'} name workspace {name!r}, which does not "
                "exist: create it (aggregator workspace create) or correct the name"
            ) from None
        loaded = await sync_config_rules(store, workspace.id, listed, file=file)
        if loaded:
            log.info("%d rules loaded from %s into workspace %s", len(loaded), file or "the settings", name)


def _parse(record: RuleRecord) -> RuleDefinition | None:
    """The stored rule validated; a webhook's encrypted secret is left out (it is decrypted when the
    webhook is called: `RuleRecord.actions` at the same index has it)."""
    actions = [
        {key: value for key, value in action.items() if key != WEBHOOK_SECRET_STORED}
        if isinstance(action, dict)
        else action
        for action in record.actions
    ]
    try:
        return RuleDefinition.model_validate(
            {
                "name": record.name,
                "position": record.position,
                "enabled": record.enabled,
                "event": record.event,
                "event_options": record.event_options,
                "conditions": record.conditions,
                "actions": actions,
            }
        )
    except ValueError as exc:
        log.error("rule %s (%s) does not validate and is skipped: %s", record.id, record.name, exc)
        return None


def rule_event(event: Event) -> str | None:
    """The rule event an event is, if any."""
    if event.type == "message.created":
        return "message.received" if event.data.get("direction") == "in" else None
    if event.type in ("conversation.created", "conversation.updated", "sla.warning", "sla.breached"):
        return event.type
    return None


@dataclass(slots=True)
class _Seen:
    """What the rules of one event read of its conversation, until one of them fires."""

    facts: ConversationFacts | None = None
    text: str | None = None  # the latest customer text (the event's message's, for message.received)
    text_read: bool = False


class RuleEngine:
    name = "automation"

    def __init__(
        self,
        store: Store,
        settings: SettingsCache,
        registry: Registry,
        enqueue_outbox: Enqueue,
        http: aiohttp.ClientSession,
        *,
        clock: Callable[[], datetime] = utcnow,
        publish: Callable[[Event], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.enqueue_outbox = enqueue_outbox
        self.http = http
        self.clock = clock
        self.publish = publish
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self.recover()
        except Exception:
            log.exception("looking for new conversations a stop left without their rules failed")
        self._timer = asyncio.create_task(self._time_loop(), name="rules-time")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None

    async def _time_loop(self) -> None:
        while True:
            await asyncio.sleep(TIME_CHECK_SECONDS)
            try:
                await self.check_time_rules(self.clock())
            except Exception:
                log.exception("checking the no_reply rules failed")

    async def recover(self, within: float = RECOVER_SECONDS) -> int:
        """conversation.created rules for the conversations of the last `within` seconds they have not
        fired on (a stop between ingest and the rules); how many fired."""
        fired = 0
        since = self.clock() - timedelta(seconds=within)
        rules = await self.store.list_rules(None, event="conversation.created", enabled_only=True)
        workspaces = list(dict.fromkeys(rule.workspace_id for rule in rules))
        for workspace_id in workspaces:
            conversation_ids = await self.store.conversations_created_since(workspace_id, since)
            for conversation_id in conversation_ids:
                event = Event(
                    "conversation.created",
                    workspace_id,
                    {"conversation_id": conversation_id},
                    conversation_id,
                )
                for record in [r for r in rules if r.workspace_id == workspace_id]:
                    done = await self.store.fired_keys(record.id, [conversation_id])
                    if done:
                        continue
                    if await self._consider(
                        record, event, "conversation.created", conversation_id, [], "created"
                    ):
                        fired += 1
        return fired

    async def handle(self, event: Event) -> None:
        kind = rule_event(event)
        if kind is None:
            return
        conversation_id = event.conversation_id or event.data.get("conversation_id")
        if not isinstance(conversation_id, str):
            return
        chain = [str(rule_id) for rule_id in event.data.get("rule_chain") or []]
        if len(chain) >= MAX_CHAIN:
            log.warning(
                "rules stop on %s of conversation %s: %d rules led to it (%s)",
                event.type,
                conversation_id,
                len(chain),
                " -> ".join(chain),
            )
            return
        # conversation.created fires once per conversation whatever the event id (recovery uses it).
        key = "created" if kind == "conversation.created" else event.id
        # Read once for all the event's rules, again after a rule fired (the next ones see its changes).
        seen = _Seen()
        for record in await self.store.list_rules(event.workspace_id, event=kind, enabled_only=True):
            if record.id in chain:
                continue
            try:
                await self._consider(record, event, kind, conversation_id, chain, key, seen)
            except NotFound:
                return
            except Exception:
                log.exception("rule %s failed on %s of conversation %s", record.id, kind, conversation_id)

    async def check_time_rules(self, now: datetime) -> int:
        """Fire the no_reply rules on the conversations quiet long enough; how many firings."""
        fired = 0
        for record in await self.store.list_rules(None, event="no_reply", enabled_only=True):
            rule = _parse(record)
            if rule is None:
                continue
            options = NoReplyOptions.model_validate(rule.event_options)
            quiet = await self.store.quiet_conversations(
                record.workspace_id, options.side, now - timedelta(hours=options.hours)
            )
            done = await self.store.fired_keys(record.id, [conversation_id for conversation_id, _ in quiet])
            for conversation_id, since in quiet:
                key = f"no_reply:{since.isoformat()}"
                if (conversation_id, key) in done:
                    continue
                event = Event(
                    "no_reply",
                    record.workspace_id,
                    {"conversation_id": conversation_id, "since": since.isoformat(), "hours": options.hours},
                    conversation_id,
                )
                try:
                    if await self._consider(record, event, "no_reply", conversation_id, [], key):
                        fired += 1
                except Exception:
                    log.exception("rule %s failed on conversation %s", record.id, conversation_id)
        return fired

    async def _consider(
        self,
        record: RuleRecord,
        event: Event,
        kind: str,
        conversation_id: str,
        chain: list[str],
        key: str,
        seen: _Seen | None = None,
    ) -> bool:
        """Run the rule if its conditions hold and it has not fired for `key`; True when it fired.

        `seen`: the conversation as the event's earlier rules read it (read here when empty).
        """
        rule = _parse(record)
        if rule is None:
            return False
        ws = record.workspace_id
        seen = _Seen() if seen is None else seen
        if seen.facts is None:
            seen.facts = await self.store.conversation_facts(ws, conversation_id)
        if not seen.text_read:
            seen.text, seen.text_read = seen.facts.last_inbound_text, True
            message_id = event.data.get("message_id")
            if kind == "message.received" and isinstance(message_id, str):
                seen.text = await self.store.inbound_text(ws, message_id) or seen.text
        facts, text = seen.facts, seen.text
        for condition in rule.conditions:
            if not await self._holds(condition, facts, text, ws):
                return False
        now = self.clock()
        if not await self.store.claim_rule_firing(ws, record.id, conversation_id, key, now):
            return False
        # Its actions may change the conversation (a reply, a note: the latest text too).
        seen.facts, seen.text_read = None, False
        actor = f"rule:{record.id}"
        next_chain = [*chain, record.id]
        changed: set[str] = set()
        results: list[dict[str, Any]] = []
        for action, stored in zip(rule.actions, record.actions, strict=True):
            try:
                outcome = await self._act(
                    action, stored, record, rule, event, kind, conversation_id, next_chain, changed
                )
            except (Invalid, NotFound, TemplateInvalid, ValueError) as exc:
                outcome = f"failed: {exc}"
                log.warning(
                    "rule %s: %s on conversation %s failed: %s", record.id, action.type, conversation_id, exc
                )
            except Exception as exc:
                outcome = f"failed: {exc}"
                log.exception(
                    "rule %s: %s on conversation %s failed", record.id, action.type, conversation_id
                )
            results.append({"type": action.type, "result": outcome})
        await self.store.add_audit_event(
            ws,
            conversation_id,
            actor,
            "rule.fired",
            {"rule": record.id, "name": record.name, "event": kind, "event_id": event.id, "actions": results},
            self.clock(),
        )
        log.info("rule %s (%s) fired on %s of conversation %s", record.id, record.name, kind, conversation_id)
        if changed:
            await self._publish(
                Event(
                    "conversation.updated",
                    ws,
                    {
                        "conversation_id": conversation_id,
                        "changed": sorted(changed),
                        "by": actor,
                        "rule_chain": next_chain,
                    },
                    conversation_id,
                )
            )
        return True

    async def _publish(self, event: Event) -> None:
        if self.publish is not None:
            await self.publish(event)

    async def _holds(self, condition: Any, facts: ConversationFacts, text: str | None, ws: str) -> bool:
        match condition:
            case ChannelCondition(channel=channel):
                return channel in (facts.channel_account_id, facts.channel_name, facts.channel_kind)
            case LanguageCondition(language=language):
                return facts.language is not None and base_language(facts.language) == base_language(language)
            case TextContainsCondition(text=needle):
                return text is not None and needle.casefold() in text.casefold()
            case TextMatchesCondition(pattern=pattern):
                return (
                    text is not None
                    and re.search(pattern, text[:MAX_MATCHED_TEXT], re.IGNORECASE) is not None
                )
            case LabelCondition(label=label, has=has):
                return (label in facts.labels) == has
            case PriorityCondition(priority=priority):
                return facts.priority == priority
            case ContactFieldCondition(field=name, equals=equals, contains=contains):
                if name == "name":
                    value: Any = facts.contact_name
                elif name == "email":
                    value = facts.contact_email
                else:
                    value = facts.contact_attributes.get(name)
                if value is None:
                    return False
                shown = value if isinstance(value, str) else json.dumps(value)
                if equals is not None:
                    return shown.casefold() == equals.casefold()
                return contains is not None and contains.casefold() in shown.casefold()
            case BusinessHoursCondition(when=when, calendar_id=calendar_id):
                hours = await conversation_hours(self.store, self.settings, ws, facts.id, calendar_id)
                # No hours anywhere: always open.
                is_open = True if hours is None else hours.is_open(self.clock())
                return is_open == (when == "inside")
            case AssigneeCondition(assignee=assignee):
                if assignee == "none":
                    return facts.assignee_id is None
                if assignee == "any":
                    return facts.assignee_id is not None
                return facts.assignee_id == assignee
        raise ValueError(f"unknown condition {condition!r}")

    async def _change(
        self, ws: str, conversation_id: str, change: ConversationChange, actor: str, changed: set[str]
    ) -> str:
        done = await self.store.update_conversation(ws, conversation_id, change, actor, self.clock())
        changed.update(done)
        return "done" if done else "unchanged"

    async def _act(
        self,
        action: Any,
        stored: dict[str, Any],
        record: RuleRecord,
        rule: RuleDefinition,
        event: Event,
        kind: str,
        conversation_id: str,
        chain: list[str],
        changed: set[str],
    ) -> str:
        ws = record.workspace_id
        actor = f"rule:{record.id}"
        now = self.clock()
        match action:
            case AssignAgentAction(user_id=ref):
                user_id = await self.store.find_active_user_id(ws, ref)
                change = ConversationChange(fields={"assignee_id"}, assignee_id=user_id)
                return await self._change(ws, conversation_id, change, actor, changed)
            case AssignTeamAction(team_id=ref):
                team_id = await self.store.find_team_id(ws, ref)
                return await self._change(
                    ws,
                    conversation_id,
                    ConversationChange(fields={"team_id"}, team_id=team_id),
                    actor,
                    changed,
                )
            case AddLabelAction(label=label) | RemoveLabelAction(label=label):
                facts = await self.store.conversation_facts(ws, conversation_id)
                labels = set(facts.labels)
                if isinstance(action, AddLabelAction):
                    labels.add(label)
                else:
                    labels.discard(label)
                return await self._change(
                    ws,
                    conversation_id,
                    ConversationChange(fields={"labels"}, labels=sorted(labels)),
                    actor,
                    changed,
                )
            case SetPriorityAction(priority=priority):
                return await self._change(
                    ws,
                    conversation_id,
                    ConversationChange(fields={"priority"}, priority=priority),
                    actor,
                    changed,
                )
            case SetSlaPolicyAction(policy_id=policy_id):
                if await self.store.set_sla_policy(ws, conversation_id, policy_id, actor, now):
                    changed.add("sla_policy_id")
                    return "done"
                return "unchanged"
            case SnoozeAction(hours=hours):
                change = ConversationChange(
                    fields={"snooze_until"}, snooze_until=now + timedelta(hours=hours)
                )
                return await self._change(ws, conversation_id, change, actor, changed)
            case ResolveAction():
                return await self._change(
                    ws,
                    conversation_id,
                    ConversationChange(fields={"status"}, status="resolved"),
                    actor,
                    changed,
                )
            case ReplyTemplateAction(template=template):
                return await self._reply(ws, conversation_id, template, record, chain)
            case AddNoteAction(text=note):
                message_id, _ = await self.store.create_message(
                    ws, conversation_id, note, user_id=None, private=True, now=now, extra={"rule": record.id}
                )
                await self._message_event(ws, conversation_id, message_id, "note", chain)
                return f"note {message_id}"
            case WebhookAction(url=url):
                try:
                    secret = self.store.webhook_secret(stored)
                except SecretKeyError:
                    return (
                        f"failed: the secret of the webhook to {url} cannot be decrypted with this secret "
                        "key: give the secret again or restore the key"
                    )
                facts = await self.store.conversation_facts(ws, conversation_id)
                body = {
                    "rule": {"id": record.id, "name": record.name},
                    "event": {"type": kind, "id": event.id, "data": event.data},
                    "conversation": facts.as_json(),
                }
                return await self._webhook(url, secret, body)
            case NotifyAction(users=users, text=note):
                facts = await self.store.conversation_facts(ws, conversation_id)
                user_ids: list[str] = []
                for user in users:
                    if user == "team_lead":
                        if facts.team_lead_id is not None:
                            user_ids.append(facts.team_lead_id)
                    else:
                        user_ids.append(user)
                user_ids = list(dict.fromkeys(user_ids))
                if not user_ids:
                    return "nobody to notify (the conversation's team has no lead)"
                await self._publish(
                    Event(
                        "notification",
                        ws,
                        {
                            "user_ids": user_ids,
                            "text": note,
                            "conversation_id": conversation_id,
                            "rule_chain": chain,
                        },
                        conversation_id,
                    )
                )
                return f"notified {', '.join(user_ids)}"
        raise ValueError(f"unknown action {action!r}")

    async def _reply(
        self, ws: str, conversation_id: str, template: str, record: RuleRecord, chain: list[str]
    ) -> str:
        # Never to an auto-responder, a list or a bounce: two automatic senders would answer each other.
        flags = set(await self.store.latest_inbound_flags(conversation_id)) & AUTOMATIC_FLAGS
        if flags:
            return f"skipped: the customer's latest message is automatic ({', '.join(sorted(flags))})"
        now = self.clock()
        settings = await self.settings.get(ws)
        composed = await compose(
            self.store, self.registry, ws, conversation_id, template, now=now, settings=settings
        )
        text_body, html, subject, extra = composed.message_fields()
        extra["automatic"] = "rule"
        extra["rule"] = record.id
        message_id, outbox_id = await self.store.create_message(
            ws,
            conversation_id,
            text_body,
            user_id=None,
            private=False,
            html=html,
            subject=subject,
            automatic=True,
            now=now,
            language=composed.rendered.language,
            extra=extra,
        )
        if outbox_id is not None:
            await self.enqueue_outbox(outbox_id)
        await self._message_event(ws, conversation_id, message_id, "message", chain, automatic="rule")
        return f"reply {message_id}"

    async def _message_event(
        self,
        ws: str,
        conversation_id: str,
        message_id: str,
        kind: str,
        chain: list[str],
        *,
        automatic: str | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "conversation_id": conversation_id,
            "message_id": message_id,
            "direction": "out",
            "kind": kind,
            "rule_chain": chain,
        }
        if automatic is not None:
            data["automatic"] = automatic
        await self._publish(Event("message.created", ws, data, conversation_id))

    async def _webhook(self, url: str, secret: str | None, body: dict[str, Any]) -> str:
        raw = json.dumps(body, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        try:
            async with self.http.post(
                url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS)
            ) as response:
                if response.status >= 300:
                    return f"failed: {url} answered {response.status}"
                return f"sent ({response.status})"
        except TimeoutError:
            return f"failed: {url} did not answer within {WEBHOOK_TIMEOUT_SECONDS:.0f} s"
        except aiohttp.ClientError as exc:
            return f"failed: {url}: {exc}"
