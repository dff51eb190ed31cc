"""The outbox worker: queued replies -> channel adapters, with retries, back-off and delivery status.

SQL is the record of what must be sent; the bus only carries outbox ids to whichever worker is free.
A worker claims the SQL row atomically before sending, so an id delivered twice is sent once; a claim
left behind by a crashed worker expires and the row is sent again with the same message id (the
idempotency key the receiving side can recognise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aggregator.bus import Bus, BusUnavailable, Job
from aggregator.config import OutboxSettings
from aggregator.metrics import Metrics
from aggregator.model import ConnectionState, Event, OutboxStatus, SendResult, utcnow
from aggregator.store import OutboxItem, Store
from channels.base import AuthError, ChannelAdapter, ChannelError, PermanentError, TransientError

log = logging.getLogger(__name__)

OUTBOX_QUEUE = "outbox"

AdapterLookup = Callable[[str], "ChannelAdapter[Any] | None"]


class OutboxWorker:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        adapter_for: AdapterLookup,
        metrics: Metrics,
        settings: OutboxSettings,
        *,
        node_id: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.bus = bus
        self.adapter_for = adapter_for
        self.metrics = metrics
        self.settings = settings
        self.node_id = node_id
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._enqueued_at: dict[str, float] = {}
        self._busy: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for number in range(self.settings.workers):
            consumer = f"{self.node_id}-{number}"
            self._tasks.append(asyncio.create_task(self._work_loop(consumer), name=f"outbox-{consumer}"))
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="outbox-sweeper"))

    async def stop(self) -> None:
        """Take no new work; let sends in flight finish (each is bounded by the send timeout)."""
        self._stopping.set()
        # Workers waiting for work have nothing to finish; a job a cancelled take had already claimed
        # on the bus is handed out again after the visibility timeout, and SQL still has it anyway.
        for task in self._tasks:
            if task not in self._busy:
                task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.send_timeout_seconds + 5)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def enqueue(self, outbox_id: str, delay: float = 0.0) -> None:
        """Hand a row to the workers now; if the bus is down the sweeper does it later from SQL."""
        try:
            await self.bus.enqueue(OUTBOX_QUEUE, outbox_id, delay=delay)
            self._enqueued_at[outbox_id] = time.monotonic() + delay
        except BusUnavailable as exc:
            log.warning("outbox %s stays queued in SQL until the bus is back: %s", outbox_id, exc)

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except BusUnavailable as exc:
                log.warning("outbox sweep postponed, bus unavailable: %s", exc)
            except Exception:
                log.exception("outbox sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.sweep_interval_seconds)

    async def sweep(self) -> int:
        """Enqueue due rows the bus does not hold (first start, Redis flushed or down, crashed claims)."""
        now = self.clock()
        mono = time.monotonic()
        lost_after = max(30.0, 4 * self.settings.sweep_interval_seconds)
        if self._enqueued_at and await self.bus.queue_depth(OUTBOX_QUEUE) == 0:
            # The bus holds nothing (flushed, or a Redis restarted without persistence): what we
            # handed it recently is gone too, so do not wait for `lost_after` to hand it again.
            self._enqueued_at.clear()
        count = 0
        for outbox_id, next_attempt_at in await self.store.due_outbox(now):
            seen = self._enqueued_at.get(outbox_id)
            if seen is not None and mono - seen < lost_after:
                continue
            delay = max(0.0, (next_attempt_at - now).total_seconds())
            await self.bus.enqueue(OUTBOX_QUEUE, outbox_id, delay=delay)
            self._enqueued_at[outbox_id] = mono + delay
            count += 1
        counts = await self.store.outbox_counts()
        self.metrics.outbox_depth.set(counts.get("queued", 0) + counts.get("sending", 0))
        horizon = mono - lost_after
        for outbox_id in [k for k, v in self._enqueued_at.items() if v < horizon]:
            del self._enqueued_at[outbox_id]
        return count

    async def _work_loop(self, consumer: str) -> None:
        while not self._stopping.is_set():
            try:
                jobs = await self.bus.take(OUTBOX_QUEUE, consumer, count=1, block=1.0)
            except BusUnavailable as exc:
                log.warning("outbox worker %s waiting for the bus: %s", consumer, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            except Exception:
                # A worker that ended here would silently stop all sending until a restart.
                log.exception("outbox worker %s: taking work failed; retrying in 1s", consumer)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            task = asyncio.current_task()
            assert task is not None
            self._busy.add(task)
            try:
                for job in jobs:
                    await self._handle(job)
            finally:
                self._busy.discard(task)

    async def _handle(self, job: Job) -> None:
        try:
            await self.process(job.payload)
        except Exception:
            # The row stays claimed or queued in SQL; the sweeper hands it out again.
            log.exception("outbox %s: processing failed", job.payload)
        with contextlib.suppress(BusUnavailable):
            await self.bus.ack(job)

    async def process(self, outbox_id: str) -> OutboxStatus | None:
        """Claim and send one outbox row; None when it was not due or is someone else's."""
        now = self.clock()
        claim = timedelta(seconds=max(self.settings.claim_seconds, self.settings.send_timeout_seconds + 5))
        item = await self.store.claim_outbox(outbox_id, now, now + claim)
        if item is None:
            return None
        self._enqueued_at.pop(outbox_id, None)
        adapter = self.adapter_for(item.channel_account_id)
        if adapter is None:
            return await self._retry(
                item, "channel", "the channel is not running (disabled or removed)", None
            )
        kind = adapter.kind
        capabilities = adapter.capabilities
        if capabilities.send_rate:
            wait = await self.bus.rate_limit(
                f"send:{item.channel_account_id}", capabilities.send_rate, capabilities.send_burst
            )
            if wait > 0:
                await self.store.finish_outbox(
                    item, OutboxStatus.QUEUED, next_attempt_at=now + timedelta(seconds=wait), attempted=False
                )
                await self.enqueue(outbox_id, delay=wait)
                return OutboxStatus.QUEUED
        message = item.outbound()
        try:
            async with asyncio.timeout(self.settings.send_timeout_seconds):
                result: SendResult = await adapter.send(message)
        except PermanentError as exc:
            return await self._fail(item, kind, exc.reason)
        except AuthError as exc:
            await adapter.context.report_state(ConnectionState.BAD_CREDENTIALS, exc.reason)
            return await self._retry(item, kind, exc.reason, self.settings.backoff_max_seconds)
        except TransientError as exc:
            return await self._retry(item, kind, exc.reason, exc.retry_after)
        except ChannelError as exc:
            return await self._fail(item, kind, exc.reason)
        except TimeoutError:
            reason = f"send timed out after {self.settings.send_timeout_seconds}s"
            return await self._retry(item, kind, reason, None)
        except Exception as exc:
            log.exception("adapter %s raised an untyped error", kind)
            return await self._retry(item, kind, f"unexpected error: {exc!r}", None)
        await self.store.finish_outbox(item, OutboxStatus.SENT, external_id=result.external_id)
        self.metrics.messages_out.labels(kind).inc()
        await self._publish_delivery(item, OutboxStatus.SENT, None)
        return OutboxStatus.SENT

    async def _publish_delivery(self, item: OutboxItem, status: OutboxStatus, error: str | None) -> None:
        # Live clients hear of it at once; the record is in SQL whatever the bus does.
        event = Event(
            "message.delivery",
            item.workspace_id,
            {
                "message_id": item.message_id,
                "conversation_id": item.conversation_id,
                "delivery_status": status.value,
                "error": error,
            },
            item.conversation_id,
        )
        try:
            await self.bus.publish(event)
        except BusUnavailable as exc:
            log.debug("delivery status of %s not published: %s", item.message_id, exc)

    def backoff(self, attempts: int) -> float:
        base = self.settings.backoff_base_seconds * 2 ** max(0, attempts - 1)
        capped: float = min(self.settings.backoff_max_seconds, base)
        return capped * random.uniform(0.8, 1.2)

    async def _retry(
        self, item: OutboxItem, kind: str, reason: str, retry_after: float | None
    ) -> OutboxStatus:
        if item.attempts >= self.settings.max_attempts:
            return await self._fail(item, kind, f"gave up after {item.attempts} attempts: {reason}")
        delay = max(retry_after or 0.0, self.backoff(item.attempts))
        self.metrics.send_failures.labels(kind, "retry").inc()
        log.info(
            "outbox %s: attempt %d failed (%s); retry in %.1fs", item.outbox_id, item.attempts, reason, delay
        )
        await self.store.finish_outbox(
            item, OutboxStatus.QUEUED, error=reason, next_attempt_at=self.clock() + timedelta(seconds=delay)
        )
        await self._publish_delivery(item, OutboxStatus.QUEUED, reason)
        await self.enqueue(item.outbox_id, delay=delay)
        return OutboxStatus.QUEUED

    async def _fail(self, item: OutboxItem, kind: str, reason: str) -> OutboxStatus:
        self.metrics.send_failures.labels(kind, "failed").inc()
        log.warning("outbox %s failed for good: %s", item.outbox_id, reason)
        await self.store.finish_outbox(item, OutboxStatus.FAILED, error=reason)
        await self._publish_delivery(item, OutboxStatus.FAILED, reason)
        return OutboxStatus.FAILED
