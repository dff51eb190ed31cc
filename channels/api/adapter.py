"""Inbound: POST /channels/api/{channel_id}/messages, HMAC-signed JSON. Outbound: signed POST to callback_url."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import aiohttp
from aiohttp import web
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
)

from aggregator.model import (
    Identity,
    InboundAttachment,
    InboundMessage,
    OutboundMessage,
    SendResult,
    ThreadHints,
)
from channels.base import (
    Capabilities,
    ChannelAdapter,
    ChannelConfig,
    CheckResult,
    Formatting,
    PermanentError,
    RateLimited,
    TransientError,
)

SIGNATURE_HEADER = "X-Aggregator-Signature"
KIND = "api"

NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=512)]


def sign(secret: str, body: bytes) -> str:
    """The X-Aggregator-Signature value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class ApiChannelConfig(ChannelConfig):
    secret: SecretStr = Field(min_length=16, description="HMAC-SHA256 key shared with the sender")
    callback_url: AnyHttpUrl | None = Field(None, description="where replies are POSTed")
    timeout_seconds: float = Field(15.0, gt=0, le=300)


class _Sender(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: NonEmpty
    name: str | None = Field(None, max_length=400)
    email: str | None = Field(None, max_length=320)


class _Attachment(BaseModel):
    filename: NonEmpty
    content_type: str = Field("application/octet-stream", max_length=255)
    data_base64: str


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")
    external_id: NonEmpty
    sender: _Sender
    text: str = Field(max_length=1_000_000)
    thread_id: NonEmpty | None = None
    subject: str | None = Field(None, max_length=2000)
    sent_at: datetime | None = None
    attachments: list[_Attachment] = Field(default_factory=list, max_length=100)


def _error(
    status: type[web.HTTPException],
    code: str,
    message: str,
    field: str | None = None,
    **status_args: Any,
) -> web.HTTPException:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return status(text=json.dumps({"error": body}), content_type="application/json", **status_args)


def _too_large(code: str, message: str, limit: int, size: int, field: str | None = None) -> web.HTTPException:
    # aiohttp's 413 exception requires the limit and the size it was given.
    return _error(web.HTTPRequestEntityTooLarge, code, message, field, max_size=limit, actual_size=size)


class ApiChannel(ChannelAdapter[ApiChannelConfig]):
    kind = KIND
    config_model = ApiChannelConfig
    capabilities = Capabilities(formatting=(Formatting.PLAIN,), attachments=False)

    async def handle_request(self, path: str, request: web.Request) -> web.StreamResponse:
        if path != "messages":
            return await super().handle_request(path, request)
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        limit = self.context.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(
                "too_large", f"body over the limit of {limit} bytes", limit, request.content_length
            )
        # StreamReader.read(n) returns what has arrived so far, not n bytes: read until the end.
        received = bytearray()
        while len(received) <= limit:
            chunk = await request.content.read(limit + 1 - len(received))
            if not chunk:
                break
            received += chunk
        body = bytes(received)
        if len(body) > limit:
            raise _too_large("too_large", f"body over the limit of {limit} bytes", limit, len(body))

        given = request.headers.get(SIGNATURE_HEADER, "")
        expected = sign(self.config.secret.get_secret_value(), body)
        if not given:
            raise _error(
                web.HTTPUnauthorized, "signature_missing", f"the {SIGNATURE_HEADER} header is missing"
            )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise _error(
                web.HTTPUnauthorized,
                "signature_invalid",
                f"{SIGNATURE_HEADER} does not match: expected sha256=<hex HMAC-SHA256 of the raw body "
                "with the channel secret>",
            )
        message = self._parse(body)
        result = await self.context.sink(message)
        status = 202 if result.created else 200
        return web.json_response(
            {"message_id": result.message_id, "conversation_id": result.conversation_id}, status=status
        )

    def _address(self, sender_id: str) -> str:
        # Sender ids are each integration's own: the same "42" from two shops is two people.
        return f"{self.account.id}/{sender_id}"

    def _sender_id(self, address: str) -> str:
        prefix = f"{self.account.id}/"
        return address[len(prefix) :] if address.startswith(prefix) else address

    def _parse(self, body: bytes) -> InboundMessage:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _error(web.HTTPBadRequest, "invalid_json", f"the body is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise _error(web.HTTPBadRequest, "invalid_json", "the body is nested too deeply") from exc
        if not isinstance(data, dict):
            raise _error(web.HTTPBadRequest, "invalid_json", "the body must be a JSON object")
        try:
            payload = _Payload.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise _error(web.HTTPBadRequest, "invalid_field", f"{field}: {first['msg']}", field) from exc
        attachments = []
        for index, attachment in enumerate(payload.attachments):
            field = f"attachments.{index}.data_base64"
            try:
                content = base64.b64decode(attachment.data_base64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _error(
                    web.HTTPBadRequest, "invalid_field", f"{field}: not valid base64", field
                ) from exc
            if len(content) > self.context.max_attachment_bytes:
                raise _too_large(
                    "attachment_too_large",
                    f"{field}: {len(content)} bytes, over the limit of {self.context.max_attachment_bytes}",
                    self.context.max_attachment_bytes,
                    len(content),
                    field,
                )
            attachments.append(InboundAttachment(attachment.filename, attachment.content_type, content))
        sent_at = payload.sent_at
        if sent_at is not None and sent_at.tzinfo is None:
            raise _error(
                web.HTTPBadRequest, "invalid_field", "sent_at: needs a time zone (e.g. ...Z)", "sent_at"
            )
        if sent_at is not None:
            # Stored in UTC: 0001-01-01T00:00+05:00 or 9999-12-31T23:59-05:00 have no UTC equivalent.
            try:
                sent_at = sent_at.astimezone(UTC)
            except OverflowError as exc:
                raise _error(
                    web.HTTPBadRequest, "invalid_field", "sent_at: out of range in UTC", "sent_at"
                ) from exc
        sender = payload.sender
        thread = (
            ThreadHints(keys=(f"thread:{payload.thread_id}",), by_contact=False, thread_ref=payload.thread_id)
            if payload.thread_id
            else ThreadHints(by_contact=True)
        )
        extra = {**(payload.model_extra or {})}
        if sender.model_extra:
            extra["sender"] = sender.model_extra
        return InboundMessage(
            channel_account_id=self.account.id,
            external_id=payload.external_id,
            sender=Identity(KIND, self._address(sender.id), sender.name, sender.email),
            text=payload.text,
            thread=thread,
            subject=payload.subject,
            attachments=tuple(attachments),
            sent_at=sent_at,
            extra=extra,
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        if self.config.callback_url is None:
            raise PermanentError(f"API channel {self.account.name!r} has no callback_url to send replies to")
        body = json.dumps(
            {
                "message_id": message.message_id,
                "conversation_id": message.conversation_id,
                "thread_id": message.thread_ref,
                "recipient": {"id": self._sender_id(message.recipient.address)},
                "text": message.text,
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.config.secret.get_secret_value(), body),
            "Idempotency-Key": message.message_id,
        }
        url = str(self.config.callback_url)
        try:
            async with self.context.http.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            ) as response:
                text = await response.text()
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except TimeoutError as exc:
            raise TransientError(f"callback {url} timed out after {self.config.timeout_seconds}s") from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"callback {url} unreachable: {exc}") from exc
        if 200 <= status < 300:
            return SendResult(external_id=_external_id(text))
        detail = f"callback {url} answered {status}: {text[:300]}"
        if status == 429:
            raise RateLimited(detail, retry_after)
        if status >= 500 or status == 408:
            raise TransientError(detail, retry_after)
        raise PermanentError(detail)

    async def check(self) -> CheckResult:
        if self.config.callback_url is None:
            return CheckResult(True, "inbound ready; no callback_url set, so replies cannot be sent")
        url = str(self.config.callback_url)
        try:
            async with self.context.http.head(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                return CheckResult(
                    response.status < 500, f"callback {url} answered HEAD with {response.status}"
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return CheckResult(False, f"callback {url} unreachable: {exc or type(exc).__name__}")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _external_id(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("external_id"), str | int):
        return str(data["external_id"])
    return None
