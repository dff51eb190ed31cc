"""The email channel: IMAP in (IDLE or polling, one reader per folder), SMTP out.

A fetched mail's identity is (account, folder, UIDVALIDITY, UID), its external id. Each folder's
checkpoint (UIDVALIDITY, last UID) is advanced only after the sink has stored the mail. A folder seen
for the first time starts at its current end (new mail only) and that starting point is saved at
once; history is imported only when an admin asks (`import_history`). When UIDVALIDITY changes the
folder is read again from the day it was first connected: mail stored before is recognised by the
hash of its raw original, so nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from typing import Any, ClassVar

from aggregator.model import (
    ConnectionState,
    DeliveryReport,
    DeliveryStatus,
    Identity,
    InboundAttachment,
    InboundMessage,
    IngestResult,
    MessageFlags,
    OutboundMessage,
    SendResult,
    ThreadHints,
)
from aggregator.threading import normalize_subject
from channels.base import (
    AuthError,
    Capabilities,
    ChannelAdapter,
    CheckResult,
    Formatting,
    PermanentError,
    TransientError,
)
from channels.email.compose import compose, message_id_for, reply_subject
from channels.email.config import EmailChannelConfig
from channels.email.imap import (
    FolderState,
    ImapAuthError,
    ImapClient,
    ImapError,
    ImapSettings,
    ImapTransientError,
)
from channels.email.parse import ParsedMail, parse_message
from channels.email.smtp import SmtpSettings, check_login, send_message

KIND = "email"
FETCH_CHUNK = 200
MAX_REPLY_REFS = 20
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
# A folder that cannot be read for a reason only an admin can fix is tried again this often.
PERMANENT_RETRY_SECONDS = 300.0
START_WAIT_SECONDS = 10.0

_OUR_ID = re.compile(r"^([0-9a-f]{32})@(.+)$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def external_id(folder: str, uidvalidity: int, uid: int) -> str:
    """The message's identity on its server; the folder comes last, as it may contain any character."""
    return f"imap:{uidvalidity}:{uid}:{folder}"


def _bare(message_id: str) -> str:
    return message_id.strip().strip("<>").strip()


@dataclass(frozen=True, slots=True)
class ImportReport:
    folder: str
    found: int
    stored: int
    already: int


Progress = Callable[[str, int, int], None]
"""(folder, done, total) after each stored chunk."""


class EmailChannel(ChannelAdapter[EmailChannelConfig]):
    kind: ClassVar[str] = KIND
    config_model = EmailChannelConfig
    capabilities = Capabilities(
        max_text_length=None,
        formatting=(Formatting.PLAIN, Formatting.HTML),
        attachments=True,
    )
    exclusive = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._states: dict[str, tuple[ConnectionState, str | None]] = {}
        self._reported: tuple[ConnectionState, str | None] | None = None
        self._storing = asyncio.Lock()
        self._first_try: dict[str, asyncio.Event] = {}

    # --- settings -------------------------------------------------------------------------------

    def imap_settings(self) -> ImapSettings:
        c = self.config
        return ImapSettings(
            host=c.imap_host,
            port=c.port("imap"),
            security=c.imap_security,
            user=c.imap_user or c.address,
            password=c.imap_password.get_secret_value(),
            timeout=c.timeout_seconds,
            tls_verify=c.tls_verify,
            ca_file=c.tls_ca_file,
        )

    def smtp_settings(self) -> SmtpSettings:
        c = self.config
        password = c.smtp_password or c.imap_password
        return SmtpSettings(
            host=c.smtp_host,
            port=c.port("smtp"),
            security=c.smtp_security,
            user=c.smtp_user or c.imap_user or c.address,
            password=password.get_secret_value(),
            timeout=c.timeout_seconds,
            tls_verify=c.tls_verify,
            ca_file=c.tls_ca_file,
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        await self.context.report_state(ConnectionState.CONNECTING, None)
        for folder in self.config.imap_folders:
            self._states[folder] = (ConnectionState.CONNECTING, None)
            self._first_try[folder] = asyncio.Event()
            self._tasks[folder] = asyncio.create_task(
                self._read_folder(folder), name=f"email-{self.account.id}-{folder}"
            )
        # Admins see at once whether the mailbox works: start returns once each folder has been tried
        # (connected, or failed with the reason shown), within a bound so a dead server stalls nothing.
        waits = [asyncio.create_task(event.wait()) for event in self._first_try.values()]
        _, pending = await asyncio.wait(waits, timeout=min(self.config.timeout_seconds, START_WAIT_SECONDS))
        for task in pending:
            task.cancel()

    async def stop(self) -> None:
        self._stopping.set()
        tasks = list(self._tasks.values())
        # A mail handed to the sink is finished first: readers stop between mails, not inside one.
        async with self._storing:
            for task in tasks:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.context.report_state(ConnectionState.STOPPED, None)

    async def _set_state(self, folder: str, state: ConnectionState, detail: str | None) -> None:
        """One state for the account: the worst of its folders (bad credentials first)."""
        self._states[folder] = (state, detail)
        if state is not ConnectionState.CONNECTING and folder in self._first_try:
            self._first_try[folder].set()
        order = [
            ConnectionState.BAD_CREDENTIALS,
            ConnectionState.UNKNOWN_ERROR,
            ConnectionState.TRANSIENT_DISCONNECT,
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
        ]
        worst = min(self._states.values(), key=lambda s: order.index(s[0]) if s[0] in order else 0)
        if worst != self._reported:
            self._reported = worst
            await self.context.report_state(*worst)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # --- receiving ------------------------------------------------------------------------------

    async def _read_folder(self, folder: str) -> None:
        """Read one folder until stopped: connect, catch up, wait (IDLE or poll), repeat; never give up."""
        log = self.context.logger
        failures = 0
        while not self._stopping.is_set():
            client: ImapClient | None = None
            try:
                client = await ImapClient.connect(self.imap_settings())
                await self._follow(client, folder)
            except ImapAuthError as exc:
                detail = f"IMAP login to {self.config.imap_host} refused: {exc}. Fix imap_user / imap_password."
                log.error("folder %s: %s", folder, detail)
                await self._set_state(folder, ConnectionState.BAD_CREDENTIALS, detail)
                # Trying again would only lock the account on the server: wait for new settings,
                # which restart this adapter.
                await self._stopping.wait()
            except (ImapTransientError, OSError, TimeoutError) as exc:
                failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 10))
                delay *= random.uniform(0.5, 1.5)
                detail = f"IMAP {self.config.imap_host}: {exc}; retrying in {delay:.0f}s"
                log.warning("folder %s: %s", folder, detail)
                await self._set_state(folder, ConnectionState.TRANSIENT_DISCONNECT, detail)
                await self._pause(delay)
            except ImapError as exc:
                detail = f"IMAP {self.config.imap_host}: {exc}"
                log.error("folder %s: %s (retrying in %.0fs)", folder, detail, PERMANENT_RETRY_SECONDS)
                await self._set_state(folder, ConnectionState.UNKNOWN_ERROR, detail)
                await self._pause(PERMANENT_RETRY_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.exception("folder %s: unexpected error", folder)
                await self._set_state(folder, ConnectionState.UNKNOWN_ERROR, f"unexpected error: {exc!r}")
                await self._pause(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures, 10)))
            else:
                failures = 0
            finally:
                if client is not None:
                    await client.logout()

    async def _follow(self, client: ImapClient, folder: str) -> None:
        state = await client.select(folder)
        key = f"folder:{folder}"
        checkpoint = await self.context.checkpoints.get(key)
        now = self.context.clock()
        if checkpoint is None:
            # New mail only: the starting point is saved before anything else can happen.
            start = await _end_of(client, state)
            checkpoint = {
                "uidvalidity": state.uidvalidity,
                "last_uid": start,
                # Where history ends for `import_history`: mail above it is the reader's.
                "start_uid": start,
                "connected_at": now.isoformat(),
            }
            await self.context.checkpoints.set(key, checkpoint)
        elif checkpoint["uidvalidity"] != state.uidvalidity:
            await self._resync(client, folder, state.uidvalidity, checkpoint)
            checkpoint = await self.context.checkpoints.get(key)
        await self._set_state(folder, ConnectionState.CONNECTED, None)
        last_uid = int(checkpoint["last_uid"])
        while not self._stopping.is_set():
            uids = await client.uids_after(last_uid)
            if uids:
                last_uid = await self._store_uids(client, folder, state.uidvalidity, uids, key, checkpoint)
            # IDLE ends after idle_seconds at the latest and is issued again (RFC 2177: within 29 min).
            if client.has_idle:
                await client.wait_for_change(self.config.idle_seconds)
            else:
                await client.wait_for_change(self.config.poll_seconds, poll_interval=self.config.poll_seconds)

    async def _resync(
        self, client: ImapClient, folder: str, uidvalidity: int, old: dict[str, Any]
    ) -> None:
        """UIDVALIDITY changed: read the folder again from the day we started on it; repeats are skipped."""
        since = _day(old.get("imported_since") or old.get("connected_at"))
        uids = await client.uids_since(since) if since is not None else await client.uids_after(0)
        self.context.logger.warning(
            "folder %s: UIDVALIDITY changed from %s to %s; reading %d mails again since %s "
            "(mail stored before is recognised by its content)",
            folder, old["uidvalidity"], uidvalidity, len(uids), since or "the beginning",
        )
        key = f"folder:{folder}"
        state = await client.select(folder)
        end = await _end_of(client, state)
        # In the new numbering, history (for a later import) is what is there now; all of it since
        # the day we started on the folder is read here again.
        checkpoint = {**old, "uidvalidity": uidvalidity, "last_uid": 0, "start_uid": end}
        await self.context.checkpoints.set(key, checkpoint)
        if uids:
            await self._store_uids(client, folder, uidvalidity, uids, key, checkpoint)
        checkpoint["last_uid"] = max(int(checkpoint["last_uid"]), end)
        await self.context.checkpoints.set(key, checkpoint)

    async def _store_uids(
        self,
        client: ImapClient,
        folder: str,
        uidvalidity: int,
        uids: Sequence[int],
        key: str,
        checkpoint: dict[str, Any],
    ) -> int:
        """Fetch, store and checkpoint `uids` chunk by chunk; returns the last UID stored."""
        last_uid = int(checkpoint["last_uid"])
        async with contextlib.aclosing(self._stored_chunks(client, folder, uidvalidity, uids)) as chunks:
            async for chunk, results in chunks:
                async with self._storing:
                    for uid, outcome in results:
                        if isinstance(outcome, Exception):
                            # Not past a mail that is not stored: it is fetched again after a reconnect.
                            raise ImapTransientError(f"storing mail UID {uid} of {folder!r} failed: {outcome}")
                    # UIDs the server listed but did not return (expunged meanwhile) are passed over too.
                    checkpoint["last_uid"] = last_uid = max(last_uid, chunk[-1])
                    await self.context.checkpoints.set(key, checkpoint)
                await self._after_store(client, [uid for uid, _ in results])
                if self._stopping.is_set():
                    break
        return last_uid

    async def _stored_chunks(
        self, client: ImapClient, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> AsyncGenerator[tuple[list[int], list[tuple[int, IngestResult | Exception]]], None]:
        """(chunk of UIDs, each fetched mail's outcome) once the chunk is stored, in UID order.

        While one chunk commits the next is fetched and parsed: the writer and the parser work at the
        same time. Chunks are handed to the core strictly in order, so a reply is threaded after its
        parent even when both are in the backlog.
        """
        ordered = sorted(uids)
        in_flight: tuple[list[int], list[int], asyncio.Task[list[IngestResult | Exception]]] | None = None
        previous: asyncio.Event | None = None
        try:
            for start in range(0, len(ordered), FETCH_CHUNK):
                chunk = ordered[start : start + FETCH_CHUNK]
                fetched = sorted([item async for item in client.fetch(chunk)])
                messages = [self.to_inbound(raw, folder, uidvalidity, uid) for uid, raw in fetched]
                queued = asyncio.Event()
                task = asyncio.create_task(self._hand_over(messages, previous, queued))
                previous = queued
                if in_flight is not None:
                    yield in_flight[0], list(zip(in_flight[1], await in_flight[2], strict=True))
                in_flight = (chunk, [uid for uid, _ in fetched], task)
            if in_flight is not None:
                yield in_flight[0], list(zip(in_flight[1], await in_flight[2], strict=True))
                in_flight = None
        finally:
            if in_flight is not None and not in_flight[2].done():
                # What the core took already is stored; the checkpoint is not past it, so it comes again
                # and is recognised as a repeat.
                in_flight[2].cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await in_flight[2]

    async def _hand_over(
        self, messages: Sequence[InboundMessage], previous: asyncio.Event | None, queued: asyncio.Event
    ) -> list[IngestResult | Exception]:
        if previous is not None:
            await previous.wait()
        return await self.context.ingest_many(messages, queued=queued)

    async def _after_store(self, client: ImapClient, uids: Sequence[int]) -> None:
        action = self.config.after_store
        if action == "none" or not uids:
            return
        for uid in uids:
            if action == "seen":
                await client.mark_seen(uid)
            elif (target := self.config.move_to) is not None:
                await client.move(uid, target)

    # --- mapping --------------------------------------------------------------------------------

    def to_inbound(self, raw: bytes, folder: str, uidvalidity: int, uid: int) -> InboundMessage:
        """The normalised message for one raw mail (never raises: broken mail is stored with its defects)."""
        mail = parse_message(raw)
        return self.inbound_from(mail, raw, external_id(folder, uidvalidity, uid), {
            "folder": folder, "uidvalidity": uidvalidity, "uid": uid,
        })

    def inbound_from(
        self, mail: ParsedMail, raw: bytes, ext_id: str, where: dict[str, Any]
    ) -> InboundMessage:
        c = self.config
        if mail.sender is not None and mail.sender[1]:
            name, address = mail.sender
        else:
            name, address = "(no sender)", "unknown-sender@invalid"
        address = address.strip().lower()
        attachments: list[InboundAttachment] = []
        not_kept: list[dict[str, Any]] = []
        for number, part in enumerate(mail.attachments, 1):
            filename = part.filename or f"attachment-{number}"
            if part.size > self.context.max_attachment_bytes:
                # The mail is still stored (and its raw original has the attachment): only the
                # separate copy is left out.
                not_kept.append({"filename": filename, "size": part.size, "reason": "over max_attachment_bytes"})
                continue
            attachments.append(InboundAttachment(filename, part.content_type, part.content))

        ours = self._our_message_ids((*mail.references, *([mail.in_reply_to] if mail.in_reply_to else ())))
        tokens = self._tokens(mail)
        report = None
        if mail.delivery_report is not None and mail.delivery_report.original_message_id:
            original = self._our_message_id(mail.delivery_report.original_message_id)
            if original is not None:
                ours = (*ours, original)
                action = mail.delivery_report.action
                if action == "failed":
                    report = DeliveryReport(original, DeliveryStatus.FAILED, mail.delivery_report.reason)
        other_ids = [
            _bare(i)
            for i in (*mail.references, *([mail.in_reply_to] if mail.in_reply_to else ()))
            if self._our_message_id(i) is None
        ]
        contact_keys = [f"mid:{i}" for i in dict.fromkeys(other_ids) if i]
        if mail.thread_index:
            contact_keys.append(f"thread-index:{mail.thread_index}")
        looks_like_reply = bool(mail.in_reply_to or mail.references) or (
            normalize_subject(mail.subject) != " ".join((mail.subject or "").split()).casefold()
        )
        own_id = _bare(mail.message_id) if mail.message_id else None
        chain = [_bare(r) for r in mail.references] or ([_bare(mail.in_reply_to)] if mail.in_reply_to else [])
        reply_refs = [*chain, *([own_id] if own_id else [])][-MAX_REPLY_REFS:]
        thread = ThreadHints(
            own_keys=(f"mid:{own_id}",) if own_id else (),
            by_contact=False,
            conversation_refs=tokens,
            message_refs=tuple(dict.fromkeys(ours)),
            contact_keys=tuple(dict.fromkeys(contact_keys)),
            subject_key=(normalize_subject(mail.subject) or None) if looks_like_reply else None,
            subject_window=timedelta(days=c.subject_match_days),
            reply_refs=tuple(reply_refs),
        )
        sent_at = mail.date if mail.date is not None and mail.date.tzinfo is not None else None
        return InboundMessage(
            channel_account_id=self.account.id,
            external_id=ext_id,
            sender=Identity(KIND, address, name or None, email=address),
            text=mail.text,
            reply_text=mail.reply_text if mail.reply_text != mail.text else None,
            thread=thread,
            subject=mail.subject or None,
            html=mail.html,
            recipients=tuple(
                Identity(KIND, a.strip().lower(), n or None, email=a.strip().lower())
                for n, a in (*mail.to, *mail.cc)
                if a
            ),
            attachments=tuple(attachments),
            sent_at=sent_at,
            language_hint=mail.language,
            flags=MessageFlags(
                auto_submitted=mail.auto_submitted,
                bulk=mail.bulk or mail.list,
                bounce=mail.bounce,
            ),
            raw=raw,
            dedup_by_content=True,
            delivery_report=report,
            extra={
                "email": {
                    **where,
                    "message_id": own_id,
                    "in_reply_to": _bare(mail.in_reply_to) if mail.in_reply_to else None,
                    "references": [_bare(r) for r in mail.references],
                    "to": [list(a) for a in mail.to],
                    "cc": [list(a) for a in mail.cc],
                    "reply_to": [list(a) for a in mail.reply_to],
                    "loop_reasons": list(mail.loop_reasons),
                    "defects": list(mail.defects),
                    **({"attachments_not_kept": not_kept} if not_kept else {}),
                }
            },
        )

    def _our_message_id(self, message_id: str) -> str | None:
        """Our own message id when `message_id` is one of the Message-IDs we gave our mail."""
        match = _OUR_ID.match(_bare(message_id).lower())
        if match is None or match.group(2) != self.config.id_domain:
            return None
        return match.group(1)

    def _our_message_ids(self, ids: Sequence[str]) -> tuple[str, ...]:
        return tuple(found for i in ids if (found := self._our_message_id(i)) is not None)

    def _tokens(self, mail: ParsedMail) -> tuple[str, ...]:
        """Conversation ids from our plus-addressed reply address (local+<token>@domain) among the recipients."""
        local = self.config.local_part.lower()
        domain = self.config.domain
        found = []
        for _, address in (*mail.to, *mail.cc):
            user, _, host = address.strip().lower().rpartition("@")
            base, plus, token = user.partition("+")
            if plus and base == local and host == domain and _HEX32.match(token):
                found.append(token)
        return tuple(dict.fromkeys(found))

    # --- history --------------------------------------------------------------------------------

    async def import_history(
        self, since: date, progress: Progress | None = None, folders: Sequence[str] | None = None
    ) -> list[ImportReport]:
        """Store mail received since `since` that is older than the folder's starting point.

        Resumable: the highest UID imported is checkpointed per chunk, so a second run goes on where
        the first stopped. Raises the typed IMAP errors (the caller reports them).
        """
        reports = []
        for folder in folders or self.config.imap_folders:
            client = await ImapClient.connect(self.imap_settings())
            try:
                reports.append(await self._import_folder(client, folder, since, progress))
            finally:
                await client.logout()
        return reports

    async def _import_folder(
        self, client: ImapClient, folder: str, since: date, progress: Progress | None
    ) -> ImportReport:
        state = await client.select(folder)
        follow_key = f"folder:{folder}"
        following = await self.context.checkpoints.get(follow_key)
        if following is None or following["uidvalidity"] != state.uidvalidity:
            # Not followed yet (or renumbered): fix the starting point now, so that what arrives
            # during the import is left to the reader and nothing falls between the two.
            start = await _end_of(client, state)
            following = {
                "uidvalidity": state.uidvalidity,
                "last_uid": start,
                "start_uid": start,
                "connected_at": self.context.clock().isoformat(),
            }
            await self.context.checkpoints.set(follow_key, following)
        boundary = int(following.get("start_uid", following["last_uid"]))
        key = f"import:{folder}"
        done = await self.context.checkpoints.get(key)
        if done is None or done.get("uidvalidity") != state.uidvalidity or done.get("since") != since.isoformat():
            done = {"uidvalidity": state.uidvalidity, "since": since.isoformat(), "last_uid": 0}
        candidates = [u for u in await client.uids_since(since) if done["last_uid"] < u <= boundary]
        total = len(candidates)
        stored = already = 0
        if progress is not None:
            progress(folder, 0, total)
        done_count = 0
        async with contextlib.aclosing(
            self._stored_chunks(client, folder, state.uidvalidity, candidates)
        ) as chunks:
            async for chunk, results in chunks:
                for uid, outcome in results:
                    if isinstance(outcome, Exception):
                        raise ImapTransientError(f"storing mail UID {uid} of {folder!r} failed: {outcome}")
                    if outcome.created:
                        stored += 1
                    else:
                        already += 1
                done["last_uid"] = chunk[-1]
                await self.context.checkpoints.set(key, done)
                done_count += len(chunk)
                if progress is not None:
                    progress(folder, done_count, total)
        # A later UIDVALIDITY resync reads again from the imported day, not just the connection day.
        following = await self.context.checkpoints.get(follow_key) or following
        earlier = _day(following.get("imported_since"))
        if earlier is None or since < earlier:
            following["imported_since"] = since.isoformat()
            await self.context.checkpoints.set(follow_key, following)
        return ImportReport(folder, total, stored, already)

    # --- sending --------------------------------------------------------------------------------

    def compose(self, message: OutboundMessage, when: datetime | None = None) -> EmailMessage:
        c = self.config
        reply_to = (
            f"{c.local_part}+{message.conversation_id}@{c.domain}"
            if c.reply_to_token and _HEX32.match(message.conversation_id)
            else None
        )
        return compose(
            message_id=message.message_id,
            domain=c.id_domain,
            from_address=c.address,
            display_name=c.display_name,
            to=(message.recipient.address, message.recipient.display_name),
            subject=reply_subject(message.subject) if message.references else (message.subject or ""),
            text=message.text,
            html=message.html,
            reply_to=reply_to,
            in_reply_to=message.in_reply_to,
            references=message.references,
            attachments=message.attachments,
            automatic=message.automatic,
            date=when or self.context.clock(),
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        if message.recipient.address.lower().endswith(".invalid") or message.recipient.address.endswith(
            "@invalid"
        ):
            # RFC 2606: nothing under .invalid can receive mail (our placeholder for mail without From).
            raise PermanentError(
                f"cannot reply to {message.recipient.address}: the customer's mail named no sender"
            )
        mail = self.compose(message)
        await send_message(
            self.smtp_settings(), mail, sender=self.config.address, recipients=[message.recipient.address]
        )
        if self.config.sent_folder:
            await self._append_sent(mail)
        return SendResult(external_id=message_id_for(message.message_id, self.config.id_domain))

    async def _append_sent(self, mail: EmailMessage) -> None:
        """A copy in the Sent folder, for people who also read the mailbox in a mail client; best effort."""
        folder = self.config.sent_folder
        assert folder is not None
        client = None
        try:
            client = await ImapClient.connect(self.imap_settings())
            await client.append(folder, bytes(mail), flags=("\\Seen",))
        except (ImapError, ImapAuthError, ImapTransientError, OSError) as exc:
            self.context.logger.warning("sent mail not copied to %r: %s", folder, exc)
        finally:
            if client is not None:
                await client.logout()

    async def check(self) -> CheckResult:
        results = []
        ok = True
        client = None
        try:
            client = await ImapClient.connect(self.imap_settings())
            for folder in self.config.imap_folders:
                state = await client.select(folder)
                results.append(f"IMAP: folder {folder!r} has {state.exists} messages")
            results.insert(
                0,
                f"IMAP: logged in to {self.config.imap_host}:{self.config.port('imap')} "
                f"({self.config.imap_security}){', IDLE' if client.has_idle else ', no IDLE (polling)'}",
            )
        except (ImapAuthError, ImapTransientError, ImapError, OSError) as exc:
            ok = False
            results.insert(0, f"IMAP FAILED: {exc}")
        finally:
            if client is not None:
                await client.logout()
        try:
            results.append(f"SMTP: {await check_login(self.smtp_settings())}")
        except (AuthError, TransientError, PermanentError) as exc:
            ok = False
            results.append(f"SMTP FAILED: {exc.reason}")
        return CheckResult(ok, "; ".join(results))


async def _end_of(client: ImapClient, state: FolderState) -> int:
    """The highest UID in the folder now (UIDNEXT - 1 when the server says UIDNEXT)."""
    if state.uidnext:
        return state.uidnext - 1
    return max(await client.uids_after(0), default=0)


def _day(value: Any) -> date | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed.astimezone(UTC).date() if parsed.tzinfo else parsed.date()
