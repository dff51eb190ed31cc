"""The adapter contract: what a channel kind implements, and the registry that finds them.

An adapter turns one external service into normalised inbound messages and sends outbound messages
back. It never touches the database, routing, templates or the API: the core hands it a sink for
inbound messages, a checkpoint store, the bus (for leases and rate limits), a clock, an HTTP session
and a logger.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, Protocol, TypeVar, get_args

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from aggregator.bus import Bus
from aggregator.model import (
    ConnectionState,
    Identity,
    InboundMessage,
    IngestResult,
    OutboundMessage,
    Reachability,
    SendResult,
)

ENTRY_POINT_GROUP = "aggregator.channels"


class ChannelError(Exception):
    """Base of the typed send errors. `reason` is what an agent or admin reads on the message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthError(ChannelError):
    """The credentials were refused: stop sending on this account until an admin reconnects it."""


class TransientError(ChannelError):
    """Worth retrying (network, 5xx, timeout); `retry_after` seconds when the service said so."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The service asked us to slow down."""


class PermanentError(ChannelError):
    """This message can never be sent as it is (bad recipient, rejected content)."""


class WindowClosed(PermanentError):
    """The channel's messaging window is closed for this recipient (e.g. 24 hours after their last message)."""


class ConfigInvalid(Exception):
    """A channel's configuration is unusable; `problems` maps each field to what is wrong with it."""

    def __init__(self, kind: str, problems: Mapping[str, str]) -> None:
        listing = "; ".join(f"{field}: {problem}" for field, problem in problems.items())
        super().__init__(f"invalid {kind} channel configuration: {listing}")
        self.kind = kind
        self.problems = dict(problems)


class Formatting(enum.StrEnum):
    PLAIN = "plain"
    HTML = "html"
    MARKDOWN_V2 = "markdownv2"


@dataclass(frozen=True, slots=True)
class Capabilities:
    max_text_length: int | None = None
    formatting: tuple[Formatting, ...] = (Formatting.PLAIN,)
    attachments: bool = False
    messaging_window_hours: float | None = None
    supports_edits: bool = False
    can_split: bool = False
    send_rate: float | None = None
    send_burst: int = 1


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str


class ChannelConfig(BaseModel):
    """Base of every adapter's typed configuration; fields typed SecretStr are stored encrypted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def secret_fields(cls) -> set[str]:
        # `SecretStr | None` counts too: split_secrets() stores such a field encrypted.
        return {
            name
            for name, info in cls.model_fields.items()
            if SecretStr in (info.annotation, *get_args(info.annotation))
        }

    @classmethod
    def parse(cls, kind: str, values: Mapping[str, Any]) -> ChannelConfig:
        """Validate `values`; on failure raise ConfigInvalid naming each bad field."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            problems: dict[str, str] = {}
            for error in exc.errors():
                field = ".".join(str(part) for part in error["loc"]) or "(config)"
                problems[field] = _problem(error)
            raise ConfigInvalid(kind, problems) from exc

    def split_secrets(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(plain settings, secret settings) for storage."""
        plain: dict[str, Any] = {}
        secrets: dict[str, str] = {}
        # Plain settings are stored as JSON: URLs and other rich types in their JSON form.
        as_json = self.model_dump(mode="json")
        for name, value in self:
            if isinstance(value, SecretStr):
                secrets[name] = value.get_secret_value()
            else:
                plain[name] = as_json[name]
        return plain, secrets


def _problem(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown setting"
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        # Our own validators' messages, without pydantic's "Value error, " in front.
        return str(error["ctx"]["error"])
    if error["type"] == "too_short" and "min_length" in error.get("ctx", {}):
        # Pydantic counts "items" for SecretStr; people count characters.
        return f"must be at least {error['ctx']['min_length']} characters long"
    return str(error["msg"])


@dataclass(frozen=True, slots=True)
class ChannelAccountRef:
    id: str
    workspace_id: str
    kind: str
    name: str


InboundSink = Callable[[InboundMessage], Awaitable[IngestResult]]


# Many messages stored in the order given (each with its own outcome): a reply is threaded after its
# parent even when both arrive together, e.g. a mailbox catching up after an outage.
# `queued` is set once all of them are in line for storing (see Ingestor.ingest_many).
class InboundBatchSink(Protocol):
    async def __call__(
        self, messages: Sequence[InboundMessage], *, queued: asyncio.Event | None = None
    ) -> list[IngestResult | Exception]: ...


class Checkpoints(Protocol):
    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: Any) -> None: ...

    async def delete(self, key: str) -> None: ...


StateReporter = Callable[[ConnectionState, str | None], Awaitable[None]]
# Records on a contact's identity whether it can be written to (blocked the bot, unblocked it).
ReachabilityReporter = Callable[[Identity, Reachability], Awaitable[None]]


async def _unrecorded(identity: Identity, reachability: Reachability) -> None:
    return None


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """Everything the core lends an adapter; nothing global."""

    sink: InboundSink
    checkpoints: Checkpoints
    bus: Bus
    http: aiohttp.ClientSession
    clock: Callable[[], datetime]
    logger: logging.Logger
    report_state: StateReporter
    max_body_bytes: int
    max_attachment_bytes: int
    node_id: str
    sink_many: InboundBatchSink | None = None
    report_reachability: ReachabilityReporter = _unrecorded

    async def ingest_many(
        self, messages: Sequence[InboundMessage], *, queued: asyncio.Event | None = None
    ) -> list[IngestResult | Exception]:
        """Hand over messages in order, each with its own outcome; through `sink_many` when offered.

        `queued` is set once the next batch may be handed over without overtaking this one.
        """
        if self.sink_many is not None:
            return await self.sink_many(messages, queued=queued)
        outcomes: list[IngestResult | Exception] = []
        try:
            for message in messages:
                try:
                    outcomes.append(await self.sink(message))
                except Exception as exc:
                    outcomes.append(exc)
        finally:
            if queued is not None:
                queued.set()
        return outcomes


ConfigT = TypeVar("ConfigT", bound=ChannelConfig)


class ChannelAdapter(ABC, Generic[ConfigT]):
    """One channel account's link to its external service."""

    kind: ClassVar[str]
    config_model: ClassVar[type[ChannelConfig]]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # True for adapters that pull from their source (IMAP, getUpdates): one process at a time may run
    # them, under a lease on the bus. Webhook-only adapters can run in every process. An adapter that
    # can do either sets it per instance from its configuration.
    exclusive: bool = False

    def __init__(self, account: ChannelAccountRef, config: ConfigT, context: AdapterContext) -> None:
        self.account = account
        self.config = config
        self.context = context

    async def start(self) -> None:
        """Begin receiving (poll, IDLE or webhook); hand each message to context.sink."""
        await self.context.report_state(ConnectionState.CONNECTED, None)

    async def stop(self) -> None:
        """Stop receiving; a message handed to the sink before this is finished first."""
        await self.context.report_state(ConnectionState.STOPPED, None)

    @abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one message or raise a ChannelError subclass; `message.message_id` is the idempotency key."""

    @abstractmethod
    async def check(self) -> CheckResult:
        """A live test of the credentials and settings, for admins."""

    async def handle_request(self, path: str, request: web.Request) -> web.StreamResponse:
        """Serve /channels/{kind}/{channel_id}/{path} (webhooks); 404 unless the adapter has such a path."""
        raise web.HTTPNotFound(text=f"the {self.kind} channel has no endpoint {path!r}")


class UnknownChannelKind(Exception):
    pass


AdapterClass = type[ChannelAdapter[Any]]


def discover_adapters() -> dict[str, AdapterClass]:
    """Adapter classes registered under the `aggregator.channels` entry-point group, by kind."""
    found: dict[str, AdapterClass] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        adapter = entry.load()
        if not (isinstance(adapter, type) and issubclass(adapter, ChannelAdapter)):
            raise TypeError(f"entry point {entry.name!r} ({entry.value}) is not a ChannelAdapter subclass")
        found[adapter.kind] = adapter
    return found


class Registry:
    """Adapter classes by kind."""

    def __init__(self, adapters: Mapping[str, AdapterClass] | None = None) -> None:
        self.adapters: dict[str, AdapterClass] = dict(
            adapters if adapters is not None else discover_adapters()
        )

    def get(self, kind: str) -> AdapterClass:
        try:
            return self.adapters[kind]
        except KeyError:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise UnknownChannelKind(f"no channel kind {kind!r} is installed (known: {known})") from None

    def parse_config(self, kind: str, values: Mapping[str, Any]) -> ChannelConfig:
        return self.get(kind).config_model.parse(kind, values)
