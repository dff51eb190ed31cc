"""The reactions to events, in one ordered pipeline: automation rules, then routing, then SLA timers.

Every event this process publishes (ingest, API, scheduler, the engines' own effects) is handed to
`ConversationEngine.listen` by the bus. One task takes them in order and gives each to every handler
in turn, so a rule that puts a new conversation into a team ("language hu -> team Budapest") has run
before routing picks the agent, and the SLA timer is computed with the labels and priority the rules set.
Handlers with `handle_batch` (routing, then SLA timers) run after the others, on all the events
taken together (up to BATCH_LIMIT waiting ones), in their order: a burst costs them one commit, not
one a conversation. Both decide from SQL as it is then, so the latest state counts; rules see each
event before routing has looked at any of the batch (a rule that sets a team still comes first).

Nothing here is the record: each handler keeps its state in SQL and catches up at start (routing
takes the unassigned queue, SLA recomputes what changed since it last looked), so an event dropped
by a crash or a full queue delays a reaction, it does not lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from aggregator.model import Event

log = logging.getLogger(__name__)

QUEUE_LIMIT = 100_000
# At most this many queued events are taken together: batch handlers see them in one call.
BATCH_LIMIT = 200


class Handler(Protocol):
    name: str

    async def start(self) -> None:
        """Catch up with what happened while stopped, start its own timers."""

    async def stop(self) -> None: ...

    async def handle(self, event: Event) -> None:
        """React to one event; exceptions are logged and the next event goes on."""


@runtime_checkable
class BatchHandler(Handler, Protocol):
    async def handle_batch(self, events: Sequence[Event]) -> None:
        """React to several events at once (in order, after the other handlers saw each of them)."""


class ConversationEngine:
    def __init__(self, handlers: Sequence[Handler], *, queue_limit: int = QUEUE_LIMIT) -> None:
        self.handlers = list(handlers)
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_limit)
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    def listen(self, event: Event) -> None:
        """A bus listener: queue the event (never blocks; when full, the handlers' catch-up covers it)."""
        if event.type in ("presence", "resync"):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log.warning("reactions are behind: %d events left to the periodic catch-up", self._dropped)

    async def start(self) -> None:
        for handler in self.handlers:
            await handler.start()
        self._task = asyncio.create_task(self._run(), name="conversation-engine")

    async def stop(self) -> None:
        """Finish what is queued (bounded), then stop the handlers."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), 10.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for handler in reversed(self.handlers):
            try:
                await handler.stop()
            except Exception:
                log.exception("stopping %s failed", handler.name)

    async def idle(self) -> None:
        """Wait until every queued event, and those their effects published, was handled."""
        await self._queue.join()

    async def _run(self) -> None:
        batched = [h for h in self.handlers if isinstance(h, BatchHandler)]
        one_by_one = [h for h in self.handlers if not isinstance(h, BatchHandler)]
        while True:
            events = [await self._queue.get()]
            while len(events) < BATCH_LIMIT and not self._queue.empty():
                events.append(self._queue.get_nowait())
            try:
                for event in events:
                    for handler in one_by_one:
                        try:
                            await handler.handle(event)
                        except Exception:
                            log.exception(
                                "%s failed on %s %s", handler.name, event.type, event.conversation_id
                            )
                for batch_handler in batched:
                    try:
                        await batch_handler.handle_batch(events)
                    except Exception:
                        log.exception("%s failed on %d events", batch_handler.name, len(events))
            finally:
                for _ in events:
                    self._queue.task_done()
