"""Automatic replies: the acknowledgement of a new conversation, and the out-of-hours reply.

Never to an automatic message (auto-submitted, bulk, list or bounce: no mail loops, no replies to
newsletters) nor to a customer who cannot be written to (blocked us, or has no address: a channel's
placeholder under .invalid), at most one per contact per period (RFC 3834; default 4 days), in the
customer's language, marked automatic (email: `Auto-Submitted: auto-replied`), and not counted as the
first response. The period is claimed in the transaction that queues the reply, so two processes never
both reply.

The ingest pipeline hands over each customer message after it is committed. A crash between that
commit and the reply being queued would lose the automatic reply: at start, `recover` looks again at
the customer messages of the last ten minutes, and the claim makes that safe (nothing sent twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from aggregator.model import Event, utcnow
from aggregator.replies import compose
from aggregator.routing import conversation_hours
from aggregator.store import NotFound, Store
from aggregator.store.replies import InboundFacts
from aggregator.templates import TemplateInvalid
from aggregator.workspace import SettingsCache, WorkspaceSettings
from channels.base import Registry

log = logging.getLogger(__name__)

AUTOMATIC_FLAGS = frozenset({"auto_submitted", "bulk", "bounce", "echo"})
QUEUE_LIMIT = 10_000
# At start, customer messages this recent are looked at again (see AutoReplier.recover).
RECOVER_SECONDS = 600.0

Enqueue = Callable[[str], Awaitable[None]]


def _undeliverable(address: str) -> bool:
    """An address under the reserved top-level domain .invalid (RFC 6761 6.4), which never resolves:
    what a channel records for a sender it could not read (email without a From)."""
    domain = address.rpartition("@")[2].rstrip(".").lower()
    return domain == "invalid" or domain.endswith(".invalid")


class AutoReplier:
    """Decides on and queues automatic replies to customer messages, one at a time, in order."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: SettingsCache,
        enqueue_outbox: Enqueue,
        *,
        clock: Callable[[], datetime] = utcnow,
        publish: Callable[[Event], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.enqueue_outbox = enqueue_outbox
        self.clock = clock
        self.publish = publish
        self._queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None

    def hook(self, event: Event) -> None:
        """An ingest event hook: customer messages are looked at once committed."""
        if event.type != "message.created" or event.data.get("direction") != "in":
            return
        try:
            self._queue.put_nowait(str(event.data["message_id"]))
        except asyncio.QueueFull:
            log.warning("automatic replies are behind; no automatic reply for %s", event.data["message_id"])

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="auto-replies")

    async def stop(self) -> None:
        """Finish what was handed over (each is a few queries), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), 10.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            message_id = await self._queue.get()
            try:
                await self.consider(message_id)
            except Exception:
                log.exception("automatic reply to message %s failed", message_id)
            finally:
                self._queue.task_done()

    async def idle(self) -> None:
        """Wait until everything handed over has been considered (for tests and shutdown)."""
        await self._queue.join()

    def decide(
        self, facts: InboundFacts, settings: WorkspaceSettings, now: datetime
    ) -> tuple[str, str] | None:
        """(kind, template) of the automatic reply this message gets, or None (and why, in the log)."""
        if AUTOMATIC_FLAGS & set(facts.flags):
            log.debug("no automatic reply to %s: it is automatic itself (%s)", facts.message_id, facts.flags)
            return None
        if facts.blocked:
            return None
        if _undeliverable(facts.address):
            log.debug("no automatic reply to %s: %r cannot be written to", facts.message_id, facts.address)
            return None
        rules = settings.auto_replies
        away = rules.out_of_hours
        if (
            away.enabled
            and away.template is not None
            and settings.hours is not None
            and (away.channels is None or facts.channel_account_id in away.channels)
            and not settings.hours.is_open(now)
        ):
            return "out_of_hours", away.template
        ack = rules.acknowledge.get(facts.channel_account_id)
        if ack is not None and ack.enabled and facts.first_in_conversation:
            return "acknowledge", ack.template
        return None

    async def recover(self, within: float = RECOVER_SECONDS) -> int:
        """Consider again the customer messages of the last `within` seconds; how many got a reply.

        Run at start: a message stored just before a crash (or a kill) may have missed its automatic
        reply. Considering one twice sends nothing twice: the contact's period is claimed in the
        transaction that queues a reply, so a message already answered (by this process before the
        crash, or by another one) is left alone. Hours are judged at the time the message came.
        """
        sent = 0
        for message_id in await self.store.recent_inbound(within):
            try:
                if await self.consider(message_id, at_arrival=True) is not None:
                    sent += 1
            except Exception:
                log.exception("automatic reply to message %s failed", message_id)
        if sent:
            log.info("%d automatic replies sent that a stop had left out", sent)
        return sent

    async def consider(self, message_id: str, *, at_arrival: bool = False) -> str | None:
        """Queue the automatic reply message `message_id` calls for; its message id, or None.

        `at_arrival`: judge the business hours at the time the message was stored (a late look).
        """
        facts = await self.store.inbound_facts(message_id)
        if facts is None:
            return None
        settings = await self.settings.get(facts.workspace_id)
        rules = settings.auto_replies
        away = rules.out_of_hours
        if not (away.enabled and away.template is not None) and facts.channel_account_id not in rules.acknowledge:
            return None  # no automatic reply is set up for it: no hours to look up
        # The hours that apply to this conversation (its team's calendar, or the one the out-of-hours
        # reply names, else the workspace's), for the decision and for the template's opens_at.
        hours = await conversation_hours(
            self.store,
            self.settings,
            facts.workspace_id,
            facts.conversation_id,
            away.calendar_id,
        )
        if hours is not settings.hours:
            settings = settings.model_copy(update={"hours": hours})
        now = self.clock()
        decided = self.decide(
            facts, settings, facts.created_at if at_arrival and facts.created_at is not None else now
        )
        if decided is None:
            return None
        kind, template = decided
        period = timedelta(days=settings.auto_replies.period_days)
        last = await self.store.last_auto_reply(facts.workspace_id, facts.contact_id)
        if last is not None and last[1] > now - period:
            log.info(
                "no %s reply to %s: the contact had an automatic reply at %s",
                kind,
                message_id,
                last[1].isoformat(),
            )
            return None
        try:
            composed = await compose(
                self.store,
                self.registry,
                facts.workspace_id,
                facts.conversation_id,
                template,
                now=now,
                settings=settings,
            )
        except (TemplateInvalid, NotFound) as exc:
            log.error(
                "automatic %s reply for conversation %s not sent: template %r: %s",
                kind,
                facts.conversation_id,
                template,
                exc,
            )
            return None
        text, html, subject, extra = composed.message_fields()
        extra["automatic"] = kind
        created = await self.store.create_auto_reply(
            facts.workspace_id,
            facts.conversation_id,
            facts.contact_id,
            kind,
            period,
            text,
            html=html,
            subject=subject,
            language=composed.rendered.language,
            extra=extra,
            now=now,
        )
        if created is None:
            return None
        reply_id, outbox_id = created
        await self.enqueue_outbox(outbox_id)
        if self.publish is not None:
            await self.publish(
                Event(
                    "message.created",
                    facts.workspace_id,
                    {
                        "conversation_id": facts.conversation_id,
                        "message_id": reply_id,
                        "direction": "out",
                        "kind": "message",
                        "automatic": kind,
                    },
                    facts.conversation_id,
                )
            )
        log.info("automatic %s reply %s queued for conversation %s", kind, reply_id, facts.conversation_id)
        return reply_id
