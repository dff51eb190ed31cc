"""The inbound pipeline: dedup, contact, thread, commit, then publish; adapters wait for the commit.

Messages that arrive together are committed together (group commit): one writer task drains the
queue into a batch, writes it in one transaction, and answers each waiting adapter only after that
transaction is durable. While one batch commits, the next one gathers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from aggregator.attachments import DEFER_MAX_BYTES, AttachmentStore
from aggregator.bus import Bus, BusUnavailable
from aggregator.metrics import Metrics
from aggregator.model import Event, InboundMessage, IngestResult, utcnow
from aggregator.store import PreparedInbound, Store, StoredAttachment
from aggregator.store.schema import EncodedJSON
from aggregator.workspace import SettingsCache

log = logging.getLogger(__name__)

EventHook = Callable[[Event], None]

BATCHES_IN_FLIGHT = 2


class IngestClosed(Exception):
    """The daemon is shutting down and takes no more messages; the source should retry later."""


@dataclass(slots=True)
class _Pending:
    prepared: PreparedInbound
    kind: str
    future: asyncio.Future[IngestResult]
    started: float


class Ingestor:
    """The sink adapters hand inbound messages to."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        attachments: AttachmentStore,
        metrics: Metrics,
        *,
        max_batch: int = 500,
        clock: Callable[[], datetime] = utcnow,
        settings: SettingsCache | None = None,
    ) -> None:
        self.store = store
        # Without workspace settings there is no detection: a message's language is its channel's hint.
        self.settings = settings
        self.bus = bus
        self.attachments = attachments
        self.metrics = metrics
        self.max_batch = max_batch
        self.clock = clock
        self.hooks: list[EventHook] = []
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._events: asyncio.Queue[Event] = asyncio.Queue(maxsize=100_000)
        self._accounts: dict[str, tuple[str, str]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        self._publisher = asyncio.create_task(self._publish_loop(), name="ingest-publisher")

    async def stop(self) -> None:
        """Take no new messages, commit those already taken, publish what is committed."""
        self._closed = True
        await self._queue.join()
        await self._events.join()
        for task in (self._writer, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _account(self, channel_account_id: str) -> tuple[str, str]:
        known = self._accounts.get(channel_account_id)
        if known is None:
            account = await self.store.get_channel_account(channel_account_id)
            known = self._accounts[channel_account_id] = (account.workspace_id, account.kind)
        return known

    async def __call__(self, message: InboundMessage) -> IngestResult:
        """Store the message exactly once; return only after it is durable."""
        pending = await self._prepare(message)
        await self._queue.put(pending)
        return await pending.future

    async def ingest_many(
        self, messages: Sequence[InboundMessage], *, queued: asyncio.Event | None = None
    ) -> list[IngestResult | Exception]:
        """Store messages in the order given (a reply after its parent).

        Each message gets its own outcome: one that cannot be stored does not fail the others.
        `queued` is set once all of them are in line for the writer, so a caller can prepare the next
        batch while this one commits and still keep the order.
        """
        prepared: list[_Pending | Exception] = []
        try:
            for message in messages:
                try:
                    prepared.append(await self._prepare(message))
                except Exception as exc:
                    prepared.append(exc)
            for pending in prepared:
                if isinstance(pending, _Pending):
                    await self._queue.put(pending)
        finally:
            if queued is not None:
                queued.set()
        outcomes: list[IngestResult | Exception] = []
        for pending in prepared:
            if isinstance(pending, Exception):
                outcomes.append(pending)
                continue
            try:
                outcomes.append(await pending.future)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _prepare(self, message: InboundMessage) -> _Pending:
        started = time.perf_counter()
        if self._closed:
            raise IngestClosed("the daemon is shutting down; retry later")
        if message.sent_at is not None and message.sent_at.tzinfo is None:
            raise ValueError(f"message {message.external_id!r}: sent_at must carry a time zone")
        workspace_id, kind = await self._account(message.channel_account_id)
        # Every size is checked before any file is written: a refused message leaves nothing on disk.
        for attachment in message.attachments:
            self.attachments.check_size(attachment.filename, len(attachment.content))
        try:
            extra_json = EncodedJSON(json.dumps(message.extra))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(
                f"message {message.external_id!r}: extra cannot be stored as JSON: {exc}"
            ) from exc
        # Small files go with the batch and are written by its writer, all flushed at once just before
        # the transaction; big ones are written now (a batch must not hold hundreds of megabytes).
        deferred: list[tuple[str, bytes]] = []

        async def keep(content: bytes) -> str:
            if len(content) > DEFER_MAX_BYTES:
                return await self.attachments.put(content)
            digest = hashlib.sha256(content).hexdigest()
            deferred.append((digest, content))
            return digest

        stored = [
            StoredAttachment(a.filename, a.content_type, len(a.content), await keep(a.content))
            for a in message.attachments
        ]
        raw_ref = await keep(message.raw) if message.raw is not None else None
        # What is on disk already, or encoded, does not travel to the writer (possibly another process).
        lean = dataclasses.replace(message, attachments=(), raw=None, extra={})
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        prepared = PreparedInbound(lean, workspace_id, stored, raw_ref, extra_json, tuple(deferred))
        if self.settings is not None and message.delivery_report is None and not message.flags.echo:
            await self._detect(prepared, workspace_id)
        return _Pending(prepared, kind, future, started)

    async def _detect(self, prepared: PreparedInbound, workspace_id: str) -> None:
        """Ask the batch writer to detect the message's language among the workspace's languages."""
        assert self.settings is not None
        try:
            languages = (await self.settings.get(workspace_id)).languages
        except Exception:
            log.exception("no language detection for workspace %s: its settings cannot be read", workspace_id)
            return
        prepared.detect_among = tuple(languages)

    async def _write_loop(self) -> None:
        # Two batches in flight: the writer starts the next one the moment it commits this one, instead
        # of idling while results travel back and the next batch travels out. The writer runs them one
        # after the other, so the second sees everything the first stored (dedup stays exact).
        slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.create_task(self._commit_and_release(batch, slots))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _commit_and_release(self, batch: list[_Pending], slots: asyncio.Semaphore) -> None:
        try:
            await self._commit(batch)
        finally:
            slots.release()
            for _ in batch:
                self._queue.task_done()

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            outcome = await self.store.ingest_batch(
                [p.prepared for p in batch], self.clock(), files_root=self.attachments.root
            )
        except Exception as exc:
            if len(batch) == 1:
                log.exception("storing inbound message %s failed", batch[0].prepared.message.external_id)
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # One bad message must not fail its neighbours: store them one by one.
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
            for pending in batch:
                await self._commit([pending])
            return
        self.metrics.ingest_batch_size.observe(len(batch))
        done = time.perf_counter()
        for pending, result in zip(batch, outcome.results, strict=True):
            if result.created:
                self.metrics.messages_in.labels(pending.kind).inc()
            else:
                self.metrics.duplicates_in.labels(pending.kind).inc()
            self.metrics.ingest_latency.observe(done - pending.started)
            if not pending.future.done():
                pending.future.set_result(result)
        for event in outcome.events:
            try:
                self._events.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("live event queue full; dropping %s (the record is in SQL)", event.type)

    async def _publish_loop(self) -> None:
        while True:
            events = [await self._events.get()]
            while len(events) < 1000 and not self._events.empty():
                events.append(self._events.get_nowait())
            try:
                for event in events:
                    for hook in self.hooks:
                        hook(event)
                await self.bus.publish_many(events)
            except BusUnavailable as exc:
                log.debug("%d events not published: %s", len(events), exc)
            except Exception:
                log.exception("publishing %d events failed", len(events))
            finally:
                for _ in events:
                    self._events.task_done()
