"""The Telegram channel adapter: Bot API through python-telegram-bot's `Bot`.

Receiving, in one of two modes:
- polling: getUpdates with a long-poll timeout, one process at a time (the adapter is `exclusive`
  then). The offset, which confirms updates to Telegram, is saved and sent only after the updates
  are stored: a crash before that brings them again, and the store recognises them by (chat, message).
- webhook: setWebhook with a secret derived from the token; Telegram POSTs each update to
  /channels/telegram/{id}/webhook with it in X-Telegram-Bot-Api-Secret-Token, and any process can
  take them. The answer is 200 only once the update is stored, so Telegram retries otherwise.

Sending: text split to Telegram's 4,096 characters at paragraph, sentence or word boundaries (a reply
already rendered as MarkdownV2 only between blocks, outside entities), then the attachments; each part
waits for the shared rate limits (per chat and per bot) on the bus.
The parts already sent are kept in a checkpoint, so a retry after a failure in the middle sends
only the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import random
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from telegram import Bot, InputFile, Message, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from aggregator.bus import BusUnavailable
from aggregator.model import (
    ConnectionState,
    Identity,
    InboundAttachment,
    OutboundAttachment,
    OutboundMessage,
    Reachability,
    SendResult,
)
from channels.base import (
    AdapterContext,
    AuthError,
    Capabilities,
    ChannelAccountRef,
    ChannelAdapter,
    CheckResult,
    Formatting,
    PermanentError,
    RateLimited,
    TransientError,
)
from channels.telegram.config import TelegramChannelConfig
from channels.telegram.text import TEXT_LIMIT, split_for_markdown_v2, split_markdown_v2, split_text
from channels.telegram.updates import (
    ALLOWED_UPDATES,
    KIND,
    Downloaded,
    FileRef,
    Incoming,
    MemberChange,
    Normalised,
    Settings,
    Skipped,
    external_id,
    normalise,
    parse_thread_ref,
    with_files,
)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Bots may download files of at most 20 MB from api.telegram.org (a local Bot API server has no limit).
BOT_DOWNLOAD_LIMIT = 20 * 1024 * 1024
UPDATES_PER_POLL = 100
# A send waits this long at most for the rate limiter; beyond that the outbox retries it later.
MAX_THROTTLE_WAIT = 10.0
PER_CHAT_RATE = 1.0
PER_GROUP_RATE = 20 / 60
PER_BOT_RATE = 30.0
CONFLICT_BACKOFF = (30.0, 600.0)
T = TypeVar("T")


class _Bot(Bot):
    async def raw_updates(
        self, *, offset: int | None, long_poll: int, read_timeout: float
    ) -> list[dict[str, Any]]:
        """getUpdates as JSON: Bot.get_updates fails the whole batch when one update does not parse."""
        data: dict[str, Any] = {
            "timeout": long_poll,
            "limit": UPDATES_PER_POLL,
            "allowed_updates": list(ALLOWED_UPDATES),
        }
        if offset is not None:
            data["offset"] = offset
        result = await self._post("getUpdates", data, read_timeout=read_timeout + long_poll)
        return list(result) if isinstance(result, list) else []


def webhook_secret(token: str, account_id: str) -> str:
    """The webhook's secret_token: derived, so every process and restart agrees without storing it."""
    return hmac.new(token.encode(), f"aggregator-webhook:{account_id}".encode(), hashlib.sha256).hexdigest()


class TelegramChannel(ChannelAdapter[TelegramChannelConfig]):
    kind = KIND
    config_model = TelegramChannelConfig
    capabilities = Capabilities(
        max_text_length=TEXT_LIMIT,
        formatting=(Formatting.PLAIN, Formatting.MARKDOWN_V2),
        attachments=True,
        can_split=True,
    )

    def __init__(
        self, account: ChannelAccountRef, config: TelegramChannelConfig, context: AdapterContext
    ) -> None:
        super().__init__(account, config, context)
        # Only one process may call getUpdates for a bot; webhook requests can reach any process.
        self.exclusive = config.mode == "polling"
        token = config.bot_token.get_secret_value()
        timeout = config.timeout_seconds
        self._requests = (
            HTTPXRequest(
                connection_pool_size=32,
                read_timeout=timeout,
                write_timeout=timeout,
                connect_timeout=timeout,
                pool_timeout=timeout,
                media_write_timeout=max(timeout, 60.0),
            ),
            HTTPXRequest(
                connection_pool_size=2, read_timeout=timeout, connect_timeout=timeout, pool_timeout=timeout
            ),
        )
        self.bot = _Bot(
            token,
            base_url=str(config.api_base_url),
            base_file_url=str(config.file_base_url),
            request=self._requests[0],
            get_updates_request=self._requests[1],
        )
        self.secret = webhook_secret(token, account.id)
        self.settings = Settings(account.id, config.accept_groups)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._first_try = asyncio.Event()
        self._storing = False
        self._state: tuple[ConnectionState, str | None] | None = None
        self._username: str | None = None

    # Lifecycle

    @property
    def webhook_url(self) -> str:
        assert self.config.public_url is not None
        return f"{str(self.config.public_url).rstrip('/')}/channels/{KIND}/{self.account.id}/webhook"

    async def start(self) -> None:
        await self._report(ConnectionState.CONNECTING, None)
        await asyncio.gather(*(request.initialize() for request in self._requests))
        self._task = asyncio.create_task(self._run(), name=f"telegram-{self.account.id}")
        # Admins see the first outcome (connected, bad token) right after enabling the channel.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_try.wait(), 10.0)

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            if not self._storing:
                task.cancel()
            # Updates being stored are finished (and confirmed) first.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 30.0)
        for request in self._requests:
            with contextlib.suppress(Exception):
                await request.shutdown()
        await self._report(ConnectionState.STOPPED, None)

    async def _report(self, state: ConnectionState, detail: str | None) -> None:
        if self._state != (state, detail):
            self._state = (state, detail)
            await self.context.report_state(state, detail)

    async def _run(self) -> None:
        backoff = _Backoff()
        conflicts = _Backoff(*CONFLICT_BACKOFF)
        prepared = False
        offset: int | None = await self.context.checkpoints.get("offset")
        while not self._stopping.is_set():
            try:
                if not prepared:
                    await self._prepare()
                    prepared = True
                    await self._report(ConnectionState.CONNECTED, self._connected_detail())
                    self._first_try.set()
                if self.config.mode == "webhook":
                    await self._stopping.wait()
                    return
                updates = await self.bot.raw_updates(
                    offset=offset,
                    long_poll=self.config.poll_timeout_seconds,
                    read_timeout=self.config.timeout_seconds,
                )
                if updates:
                    self._storing = True
                    try:
                        await self._store_updates(updates)
                        # Confirmed to Telegram by the next getUpdates, which carries the offset.
                        offset = max(int(u["update_id"]) for u in updates) + 1
                        await self.context.checkpoints.set("offset", offset)
                    finally:
                        self._storing = False
                await self._report(ConnectionState.CONNECTED, self._connected_detail())
                backoff.reset()
                conflicts.reset()
            except InvalidToken as exc:
                await self._report(ConnectionState.BAD_CREDENTIALS, _bad_token(exc))
                self._first_try.set()
                # Retrying cannot help: the manager restarts the adapter when the token is changed.
                await self._stopping.wait()
                return
            except Conflict as exc:
                delay = conflicts.next()
                await self._report(ConnectionState.UNKNOWN_ERROR, await self._conflict(exc, delay))
                self._first_try.set()
                await self._pause(delay)
            except RetryAfter as exc:
                delay = _retry_seconds(exc)
                await self._report(ConnectionState.TRANSIENT_DISCONNECT, f"Telegram flood control: {exc}")
                await self._pause(delay)
            except (NetworkError, TelegramError, _StoreFailed, BusUnavailable) as exc:
                delay = backoff.next()
                detail = f"{_describe(exc)}; retrying in {delay:.0f}s"
                self.context.logger.warning("telegram %s: %s", self.account.id, detail)
                await self._report(ConnectionState.TRANSIENT_DISCONNECT, detail)
                self._first_try.set()
                await self._pause(delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.context.logger.exception("telegram %s: unexpected failure", self.account.id)
                delay = backoff.next()
                await self._report(ConnectionState.UNKNOWN_ERROR, f"{exc!r}; retrying in {delay:.0f}s")
                self._first_try.set()
                await self._pause(delay)

    def _connected_detail(self) -> str:
        if self.config.mode == "webhook":
            return f"@{self._username}, webhook {self.webhook_url}"
        return f"@{self._username}, polling"

    async def _prepare(self) -> None:
        me = await self.bot.get_me()
        self._username = me.username
        if self.config.mode == "webhook":
            await self.bot.set_webhook(
                self.webhook_url,
                secret_token=self.secret,
                allowed_updates=list(ALLOWED_UPDATES),
                max_connections=40,
                drop_pending_updates=False,
            )
        else:
            # getUpdates answers 409 while a webhook is set (e.g. this channel was in webhook mode).
            await self.bot.delete_webhook(drop_pending_updates=False)

    async def _conflict(self, exc: Conflict, delay: float) -> str:
        text = str(exc)
        if "webhook" in text.lower():
            url = "unknown"
            with contextlib.suppress(TelegramError):
                url = (await self.bot.get_webhook_info()).url or "none"
            return (
                f"Telegram: {text}. Something else set a webhook for this bot ({url}) after we "
                "removed ours: switch this channel to mode=webhook, or stop the other program. "
                f"Next try in {delay:.0f}s"
            )
        return (
            f"Telegram: {text}. Another program is reading this bot's updates with the same token "
            "(a second daemon with its own database, or another bot framework); Telegram gives each "
            f"update to only one of them. Stop the other one. Next try in {delay:.0f}s"
        )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # Receiving

    async def _normalise(self, update: Any) -> Normalised:
        try:
            if not isinstance(update, dict):
                raise TypeError("an update must be a JSON object")
            return normalise(update, self.settings)
        except (KeyError, TypeError, ValueError) as exc:
            # Retrying would not make it readable; keep it in the log rather than block the others.
            self.context.logger.error(
                "telegram %s: update not understood (%r), skipped: %s",
                self.account.id,
                exc,
                json.dumps(update)[:2000],
            )
            return Skipped(f"malformed update: {exc!r}")

    async def _store_updates(self, updates: list[Any]) -> None:
        normalised = [await self._normalise(update) for update in updates]
        incoming = [n for n in normalised if isinstance(n, Incoming)]
        downloads = await asyncio.gather(*(self._download(item) for item in incoming))
        messages = [with_files(item, got) for item, got in zip(incoming, downloads, strict=True)]
        if messages:
            outcomes = await self.context.ingest_many(messages)
            failed = [o for o in outcomes if isinstance(o, Exception)]
            if failed:
                raise _StoreFailed(f"storing {len(failed)} of {len(messages)} messages failed: {failed[0]!r}")
        for item in normalised:
            if isinstance(item, MemberChange):
                await self.context.report_reachability(item.identity, item.reachability)

    async def _download(self, item: Incoming) -> Downloaded:
        got = Downloaded()
        for ref in item.files:
            reason = self._too_big(ref.size)
            content: bytes | None = None
            if reason is None:
                try:
                    content = await self._fetch(ref)
                except BadRequest as exc:
                    if "too big" in exc.message.lower():
                        reason = self._too_big(ref.size, refused=True)
                    else:
                        reason = f"Telegram refused it ({exc.message})"
                if content is not None and len(content) > self.context.max_attachment_bytes:
                    reason, content = self._too_big(len(content)), None
            if content is not None:
                got.attachments.append(InboundAttachment(ref.filename, ref.content_type, content))
            else:
                got.missing.append(
                    {"what": ref.what, "filename": ref.filename, "size": ref.size, "reason": reason}
                )
        return got

    def _too_big(self, size: int | None, *, refused: bool = False) -> str | None:
        """Why a file of `size` bytes is not fetched; None when it may be."""
        shown = f"{size / 1024 / 1024:.1f} MB" if size is not None else "size unknown"
        if refused or (self.config.official_api and size is not None and size > BOT_DOWNLOAD_LIMIT):
            return (
                f"{shown}, and Telegram lets bots download at most 20 MB (a local Bot API server, "
                "set as api_base_url and file_base_url, has no such limit)"
            )
        if size is not None and size > self.context.max_attachment_bytes:
            return f"{shown}, over this server's attachment limit of {self.context.max_attachment_bytes} bytes"
        return None

    async def _fetch(self, ref: FileRef) -> bytes:
        for attempt in range(3):
            try:
                file = await self.bot.get_file(ref.file_id)
                return bytes(await file.download_as_bytearray())
            except (BadRequest, Forbidden, InvalidToken):
                raise
            except (NetworkError, RetryAfter):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    async def handle_request(self, path: str, request: web.Request) -> web.StreamResponse:
        if path != "webhook":
            return await super().handle_request(path, request)
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        given = request.headers.get(SECRET_HEADER, "")
        if not given or not hmac.compare_digest(given.encode(), self.secret.encode()):
            return _json_error(
                403,
                "secret_invalid",
                f"{SECRET_HEADER} is missing or wrong: only Telegram, with the secret this channel set "
                "through setWebhook, may post here",
            )
        if self.config.mode != "webhook":
            return _json_error(409, "not_webhook_mode", "this channel receives by polling, not by webhook")
        limit = self.context.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _json_error(413, "too_large", f"body over the limit of {limit} bytes")
        body = await request.content.read(limit + 1)
        while len(body) <= limit and (chunk := await request.content.read(limit + 1 - len(body))):
            body += chunk
        if len(body) > limit:
            return _json_error(413, "too_large", f"body over the limit of {limit} bytes")
        try:
            update = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return _json_error(400, "invalid_json", f"the body is not a JSON update: {exc}")
        try:
            await self._store_updates([update])
        except (TelegramError, _StoreFailed, BusUnavailable) as exc:
            # Telegram retries a webhook delivery that did not get a 2xx.
            self.context.logger.warning("telegram %s: webhook update not stored: %s", self.account.id, exc)
            return _json_error(503, "not_stored", f"not stored, send it again: {_describe(exc)}")
        return web.json_response({"ok": True})

    # Sending

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send the text parts, then the attachments, each part resumed from the checkpoint after a failure.

        What text is sent, by `formatting`:
        - plain: `message.text`, split by `split_text`, no parse_mode;
        - markdownv2, no `message.markdown_v2` (typed as plain text): `message.text` split, each part
          escaped (`split_for_markdown_v2`);
        - markdownv2 with `message.markdown_v2` (rendered from a template): that MarkdownV2 as it is,
          split between blocks outside entities by `split_markdown_v2`. When it cannot be (a block over
          4,096 characters by itself, an entity never closed), the whole reply goes as escaped plain text
          instead, and the log says why at info.

        If Telegram cannot parse our MarkdownV2 (400 "can't parse entities") and it was a single part,
        nothing was delivered: the reply is sent again as escaped plain text, from `message.text` (which
        the checkpoint remembers, so a retry continues with the same parts). When it came in several
        parts the plain text of the refused part is not known, so the send fails for good
        (PermanentError), saying which part Telegram refused and which were delivered.
        """
        target = parse_thread_ref(message.thread_ref) or parse_thread_ref(message.recipient.address)
        if target is None:
            raise PermanentError(f"{message.recipient.address!r} is not a Telegram chat id")
        chat_id, topic = target
        markdown = self.config.formatting == "markdownv2"
        parts, formatted = self._text_parts(message)
        key = f"out:{message.message_id}"
        done: list[int] = []
        plain_again = False  # our MarkdownV2 was refused: the reply is being sent as plain text instead
        # A single MarkdownV2 part may have become several plain ones: its checkpoint says so.
        if len(parts) + len(message.attachments) > 1 or formatted:
            saved = await self.context.checkpoints.get(key)
            if isinstance(saved, dict):
                done = list(saved.get("sent", []))
                chat_id = int(saved.get("chat_id", chat_id))  # where a migrated group went
                if formatted and saved.get("plain"):
                    parts, formatted, plain_again = split_for_markdown_v2(message.text), False, True
        steps = len(parts) + len(message.attachments)
        if steps == 0:
            raise PermanentError("nothing to send: the message has no text and no attachments")
        reply_to = _reply_target(message)
        index = len(done)
        while index < steps:
            reply = (
                ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
                if index == 0 and reply_to is not None
                else None
            )
            await self._throttle(chat_id)
            call: Callable[[int], Awaitable[Message]]
            if index < len(parts):
                call = functools.partial(
                    self.bot.send_message,
                    text=parts[index],
                    parse_mode=ParseMode.MARKDOWN_V2 if markdown else None,
                    reply_parameters=reply,
                    message_thread_id=topic,
                )
            else:
                call = functools.partial(
                    self._send_file,
                    topic=topic,
                    attachment=message.attachments[index - len(parts)],
                    reply=reply,
                )
            try:
                sent, chat_id = await self._call(call, chat_id, message.recipient)
            except PermanentError as exc:
                reason = exc.reason
                if formatted and index < len(parts) and _unparsable(exc):
                    plain = split_for_markdown_v2(message.text)
                    if len(parts) == 1 and plain:
                        # Nothing of the reply is out yet (its text is the first step): send it as plain text.
                        self.context.logger.info(
                            "telegram %s: message %s: Telegram cannot parse its MarkdownV2 (%s); sent as "
                            "plain text",
                            self.account.id,
                            message.message_id,
                            reason,
                        )
                        parts, formatted, plain_again = plain, False, True
                        steps = len(parts) + len(message.attachments)
                        if steps > 1:
                            await self.context.checkpoints.set(
                                key, {"chat_id": chat_id, "sent": done, "plain": True}
                            )
                        continue
                    reason = (
                        f"Telegram cannot parse the MarkdownV2 of text part {index + 1} of {len(parts)}, and "
                        f"that part's plain text is not known, to send it instead: {reason}"
                    )
                if steps > 1:
                    await self.context.checkpoints.delete(key)
                if done:
                    # The customer has the first parts: say so, so nobody resends the whole reply blindly.
                    raise PermanentError(
                        f"part {index + 1} of {steps} not sent (parts 1-{len(done)} were delivered): {reason}"
                    ) from exc
                if reason != exc.reason:
                    raise PermanentError(reason) from exc
                raise
            done.append(sent.message_id)
            index += 1
            if steps > 1:
                progress: dict[str, Any] = {"chat_id": chat_id, "sent": done}
                if plain_again:
                    progress["plain"] = True
                await self.context.checkpoints.set(key, progress)
        if steps > 1:
            await self.context.checkpoints.delete(key)
        return SendResult(external_id=external_id(chat_id, done[0]))

    def _text_parts(self, message: OutboundMessage) -> tuple[list[str], bool]:
        """The text parts to send and whether they are our MarkdownV2 (not escaped plain text); see send()."""
        if self.config.formatting != "markdownv2":
            return split_text(message.text), False
        if message.markdown_v2 is not None:
            parts = split_markdown_v2(message.markdown_v2)
            if parts:
                return parts, True
            why = (
                "it is empty"
                if parts is not None
                else f"it cannot be split into messages of {TEXT_LIMIT} characters between blocks outside "
                "entities (a paragraph or code block longer than that, or an entity not closed)"
            )
            self.context.logger.info(
                "telegram %s: message %s: its MarkdownV2 is sent as plain text: %s",
                self.account.id,
                message.message_id,
                why,
            )
        return split_for_markdown_v2(message.text), False

    async def _send_file(
        self,
        chat_id: int,
        *,
        topic: int | None,
        attachment: OutboundAttachment,
        reply: ReplyParameters | None,
    ) -> Message:
        try:
            content = await asyncio.to_thread(Path(attachment.path).read_bytes)
        except OSError as exc:
            raise PermanentError(f"attachment {attachment.filename!r} cannot be read: {exc}") from exc
        upload = InputFile(content, filename=attachment.filename)
        if attachment.content_type in ("image/jpeg", "image/png") and attachment.size <= 10 * 1024 * 1024:
            return await self.bot.send_photo(chat_id, upload, reply_parameters=reply, message_thread_id=topic)
        return await self.bot.send_document(chat_id, upload, reply_parameters=reply, message_thread_id=topic)

    async def _call(
        self, call: Callable[[int], Awaitable[T]], chat_id: int, recipient: Identity
    ) -> tuple[T, int]:
        """Make one API call for the chat, with Telegram's errors turned into ours."""
        try:
            try:
                return await call(chat_id), chat_id
            except ChatMigrated as exc:
                # The group became a supergroup with a new id: that is where it lives now.
                return await call(exc.new_chat_id), exc.new_chat_id
        except RetryAfter as exc:
            seconds = _retry_seconds(exc)
            raise RateLimited(f"Telegram flood control: retry in {seconds:.0f}s", seconds) from exc
        except Forbidden as exc:
            if "blocked" in exc.message.lower() and chat_id > 0:
                await self.context.report_reachability(
                    recipient, Reachability(True, f"blocked the bot in Telegram ({exc.message})")
                )
                raise PermanentError(
                    "the customer has blocked the bot: Telegram delivers nothing to them until they "
                    f"unblock it ({exc.message})"
                ) from exc
            raise PermanentError(f"Telegram refused: {exc.message}") from exc
        except InvalidToken as exc:
            raise AuthError(_bad_token(exc)) from exc
        except BadRequest as exc:
            raise PermanentError(f"Telegram refused the message: {exc.message}") from exc
        except TimedOut as exc:
            raise TransientError(f"Telegram did not answer within {self.config.timeout_seconds}s") from exc
        except NetworkError as exc:
            raise TransientError(f"Telegram unreachable or failing: {_describe(exc)}") from exc
        except TelegramError as exc:
            raise TransientError(f"Telegram error: {_describe(exc)}") from exc

    async def _throttle(self, chat_id: int) -> None:
        """Wait for a token of the chat's and the bot's buckets, shared by all processes."""
        if not self.config.rate_limit:
            return
        bot = self.config.bot_id
        buckets = (
            (f"telegram:{bot}:chat:{chat_id}", PER_CHAT_RATE if chat_id > 0 else PER_GROUP_RATE),
            (f"telegram:{bot}", PER_BOT_RATE),
        )
        for bucket, rate in buckets:
            waited = 0.0
            while True:
                try:
                    wait = await self.context.bus.rate_limit(bucket, rate, 1)
                except BusUnavailable as exc:
                    raise TransientError(f"the rate limiter is unavailable: {exc}") from exc
                if wait <= 0:
                    break
                if waited + wait > MAX_THROTTLE_WAIT:
                    raise RateLimited(
                        f"over Telegram's rate for chat {chat_id}; next slot in {wait:.1f}s", wait
                    )
                await asyncio.sleep(wait)
                waited += wait

    # Admin

    async def check(self) -> CheckResult:
        try:
            me = await self.bot.get_me()
            detail = f"bot @{me.username} (id {me.id}), mode {self.config.mode}"
            if self.config.mode != "webhook":
                return CheckResult(True, detail)
            info = await self.bot.get_webhook_info()
        except InvalidToken as exc:
            return CheckResult(False, _bad_token(exc))
        except TelegramError as exc:
            return CheckResult(False, f"Telegram at {self.config.api_base_url} unreachable: {_describe(exc)}")
        if info.url != self.webhook_url:
            return CheckResult(
                False, f"{detail}: the webhook is {info.url or 'not set'!r}, not {self.webhook_url!r}"
            )
        detail += f", webhook set, {info.pending_update_count} updates waiting"
        if info.last_error_message:
            detail += f"; Telegram's last delivery error: {info.last_error_message}"
        return CheckResult(True, detail)


class _StoreFailed(Exception):
    pass


class _Backoff:
    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self.attempts = first, cap, 0

    def next(self) -> float:
        delay: float = min(self.cap, self.first * 2.0**self.attempts)
        self.attempts += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempts = 0


def _reply_target(message: OutboundMessage) -> int | None:
    """The customer's message a reply answers (their latest), so the chat shows what it answers."""
    for ref in reversed(message.references):
        with contextlib.suppress(ValueError):
            return int(ref)
    return None


def _unparsable(exc: PermanentError) -> bool:
    """Whether Telegram refused a message because it cannot parse its entities (our MarkdownV2)."""
    cause = exc.__cause__
    return isinstance(cause, BadRequest) and "can't parse entities" in cause.message.lower()


def _retry_seconds(exc: RetryAfter) -> float:
    # PTB 22 warns that retry_after becomes a timedelta; either way it is seconds to us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: int | timedelta = exc.retry_after
    seconds: float = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return seconds


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _bad_token(exc: TelegramError) -> str:
    return (
        f"Telegram refused bot_token ({exc.message}): get the bot's current token from @BotFather (/token) and set it with "
        "`aggregator channel update <id> --set bot_token=...`"
    )


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
