"""The adapter contract: what every channel adapter must do, checked the same way for each.

A channel's test module subclasses `AdapterContract` (its name starting with Test) and provides:

- class attributes: `adapter_class`, `secret_fields` (the config fields that must be secret),
  `inbound_sender` (a sender address valid for the channel), and `status_errors` when its service's
  statuses map differently from DEFAULT_STATUS_ERRORS (e.g. a channel without credentials of its own);
- fixtures: `valid_config` (config values pointing at the channel's fake service), `invalid_configs`
  ([(values, field that must be named)]), `unreachable_config` and `timeout_config` (overrides: a
  refused connection; a short timeout), `send_fake` (the fake service, see SendFake) and
  `inbound_delivery` (makes the running adapter receive one message through its real ingress, and
  checks that it acknowledged it to the source).

The adapter runs inside the real core (`core` fixture: SQLite store, ingestor, channel manager), so
"stored once" is checked in SQL, not in a stand-in.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol

import pytest
from pydantic import SecretStr

from aggregator.model import Identity, OutboundMessage, SendResult, new_id
from channels.base import (
    AuthError,
    Capabilities,
    ChannelAdapter,
    ChannelConfig,
    ChannelError,
    CheckResult,
    ConfigInvalid,
    PermanentError,
    RateLimited,
    TransientError,
    discover_adapters,
)
from support.app import Core, sql, wait_until


class SendFake(Protocol):
    """The channel's fake external service, as far as sending goes."""

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """Answer `status` (with Retry-After when given) to the next `times` sends."""

    def hang_next(self, times: int = 1) -> None:
        """Do not answer the next `times` sends (the adapter must time out)."""

    def delivered_texts(self) -> list[str]:
        """Texts of the messages the service accepted, in order."""


AdapterFactory = Callable[..., Awaitable[ChannelAdapter[Any]]]
# (adapter, external id, sender address, text) -> None, once the source has had its acknowledgement.
InboundDelivery = Callable[[ChannelAdapter[Any], str, str, str], Awaitable[None]]

DEFAULT_STATUS_ERRORS: Mapping[int, type[ChannelError]] = {
    400: PermanentError,
    401: AuthError,
    403: AuthError,
    404: PermanentError,
    422: PermanentError,
    500: TransientError,
    502: TransientError,
    503: TransientError,
}


class AdapterContract:
    adapter_class: ClassVar[type[ChannelAdapter[Any]]]
    secret_fields: ClassVar[frozenset[str]]
    inbound_sender: ClassVar[str] = "contract-sender"

    def expected_address(self, adapter: ChannelAdapter[Any], sender: str) -> str:
        """The identity address the adapter stores for `sender` (some scope it to the account)."""
        return sender
    recipient_address: ClassVar[str] = "contract-recipient"
    # The service's error statuses (HTTP statuses, or SMTP reply codes for email) and what each becomes.
    status_errors: ClassVar[Mapping[int, type[ChannelError]]] = DEFAULT_STATUS_ERRORS
    # The status by which the service asks us to slow down, with a retry time; None when it has none.
    rate_limit_status: ClassVar[int | None] = 429

    # What each channel's module provides.

    @pytest.fixture
    def valid_config(self) -> dict[str, Any]:
        raise NotImplementedError("the channel's contract test must provide valid_config")

    @pytest.fixture
    def invalid_configs(self) -> list[tuple[dict[str, Any], str]]:
        raise NotImplementedError("the channel's contract test must provide invalid_configs")

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        raise NotImplementedError("the channel's contract test must provide unreachable_config")

    @pytest.fixture
    def timeout_config(self) -> dict[str, Any]:
        raise NotImplementedError("the channel's contract test must provide timeout_config")

    @pytest.fixture
    def send_fake(self) -> SendFake:
        raise NotImplementedError("the channel's contract test must provide send_fake")

    @pytest.fixture
    def inbound_delivery(self) -> InboundDelivery:
        raise NotImplementedError("the channel's contract test must provide inbound_delivery")

    # Provided here.

    @pytest.fixture
    def adapter_factory(self, core: Core, valid_config: dict[str, Any]) -> AdapterFactory:
        """Stores a channel account (valid_config with overrides) and returns its running adapter."""

        async def make(**overrides: Any) -> ChannelAdapter[Any]:
            account_id = await core.add_channel({**valid_config, **overrides}, kind=self.adapter_class.kind)
            adapter = await core.adapter(account_id)
            assert isinstance(adapter, self.adapter_class)
            return adapter

        return make

    def outbound(self, adapter: ChannelAdapter[Any], text: str = "Thanks, it ships today") -> OutboundMessage:
        return OutboundMessage(
            message_id=new_id(),
            conversation_id=new_id(),
            channel_account_id=adapter.account.id,
            recipient=Identity(adapter.kind, self.recipient_address),
            text=text,
            attempt=1,
            thread_ref="contract-thread",
        )

    def parse(self, values: Mapping[str, Any]) -> ChannelConfig:
        return self.adapter_class.config_model.parse(self.adapter_class.kind, values)

    # Declaration

    def test_adapter_declares_kind_config_and_capabilities(self) -> None:
        cls = self.adapter_class
        assert isinstance(cls.kind, str) and cls.kind
        assert issubclass(cls.config_model, ChannelConfig)
        assert isinstance(cls.capabilities, Capabilities)

    def test_adapter_is_found_through_the_entry_point_group(self) -> None:
        assert discover_adapters().get(self.adapter_class.kind) is self.adapter_class

    # Configuration

    def test_valid_config_passes(self, valid_config: dict[str, Any]) -> None:
        assert isinstance(self.parse(valid_config), self.adapter_class.config_model)

    def test_each_invalid_config_raises_config_invalid_naming_the_field(
        self, invalid_configs: list[tuple[dict[str, Any], str]]
    ) -> None:
        assert invalid_configs, "give at least one invalid configuration"
        for values, field in invalid_configs:
            with pytest.raises(ConfigInvalid) as raised:
                self.parse(values)
            assert field in raised.value.problems, (values, raised.value.problems)
            assert field in str(raised.value)
            assert raised.value.kind == self.adapter_class.kind

    def test_unknown_setting_is_named(self, valid_config: dict[str, Any]) -> None:
        with pytest.raises(ConfigInvalid) as raised:
            self.parse({**valid_config, "no_such_setting": "x"})
        assert raised.value.problems == {"no_such_setting": "unknown setting"}

    def test_secret_fields_are_secret_and_never_shown(self, valid_config: dict[str, Any]) -> None:
        config = self.parse(valid_config)
        assert self.adapter_class.config_model.secret_fields() == set(self.secret_fields)
        plain, secrets = config.split_secrets()
        shown = [repr(config), str(config), config.model_dump_json(), json.dumps(plain)]
        for name in self.secret_fields:
            value = valid_config[name]
            assert isinstance(getattr(config, name), SecretStr), name
            assert all(value not in text for text in shown), name
            assert name not in plain
            assert secrets[name] == value
        assert set(secrets) == set(self.secret_fields)
        # What is stored validates back to the same configuration.
        assert self.parse({**json.loads(json.dumps(plain)), **secrets}) == config

    # Inbound

    async def test_inbound_message_is_normalised_and_stored(
        self, core: Core, adapter_factory: AdapterFactory, inbound_delivery: InboundDelivery
    ) -> None:
        adapter = await adapter_factory()
        await inbound_delivery(adapter, "contract-ext-1", self.inbound_sender, "contract inbound text")

        assert len(core.received) == 1
        message = core.received[0]
        assert message.channel_account_id == adapter.account.id
        assert message.external_id
        assert message.sender.kind == adapter.kind
        assert message.sender.address == self.expected_address(adapter, self.inbound_sender)
        assert "contract inbound text" in message.text
        assert message.sent_at is None or message.sent_at.tzinfo is not None
        stored = await sql(
            core.store,
            "SELECT external_id, text FROM messages WHERE channel_account_id = :id",
            id=adapter.account.id,
        )
        assert [tuple(r) for r in stored] == [(message.external_id, message.text)]

    async def test_redelivery_is_stored_once(
        self, core: Core, adapter_factory: AdapterFactory, inbound_delivery: InboundDelivery
    ) -> None:
        adapter = await adapter_factory()
        await inbound_delivery(adapter, "contract-ext-2", self.inbound_sender, "sent twice by the source")
        await inbound_delivery(adapter, "contract-ext-2", self.inbound_sender, "sent twice by the source")
        assert await core.store.count_messages(adapter.account.id) == 1

    # Sending

    async def test_send_returns_a_send_result(
        self, adapter_factory: AdapterFactory, send_fake: SendFake
    ) -> None:
        adapter = await adapter_factory()
        result = await adapter.send(self.outbound(adapter, "Your refund is on its way"))
        assert isinstance(result, SendResult)
        assert send_fake.delivered_texts() == ["Your refund is on its way"]

    async def test_429_is_rate_limited_with_retry_after(
        self, adapter_factory: AdapterFactory, send_fake: SendFake
    ) -> None:
        if self.rate_limit_status is None:
            pytest.skip(f"the {self.adapter_class.kind} service has no rate-limit answer with a retry time")
        adapter = await adapter_factory()
        send_fake.fail_next(self.rate_limit_status, retry_after="7")
        with pytest.raises(RateLimited) as raised:
            await adapter.send(self.outbound(adapter))
        assert raised.value.retry_after == 7.0
        assert send_fake.delivered_texts() == []

    async def test_each_error_status_maps_to_its_typed_error(
        self, adapter_factory: AdapterFactory, send_fake: SendFake
    ) -> None:
        assert self.status_errors, "list the service's error statuses"
        adapter = await adapter_factory()
        for status, expected in self.status_errors.items():
            send_fake.fail_next(status)
            with pytest.raises(ChannelError) as raised:
                await adapter.send(self.outbound(adapter))
            assert isinstance(raised.value, expected), f"{status} gave {type(raised.value).__name__}"
            if expected is TransientError:
                assert not isinstance(raised.value, RateLimited), status
            assert raised.value.reason, status
        assert send_fake.delivered_texts() == []

    async def test_timeout_is_transient(
        self, adapter_factory: AdapterFactory, send_fake: SendFake, timeout_config: dict[str, Any]
    ) -> None:
        adapter = await adapter_factory(**timeout_config)
        send_fake.hang_next()
        with pytest.raises(TransientError) as raised:
            await adapter.send(self.outbound(adapter))
        assert not isinstance(raised.value, RateLimited)

    async def test_connection_refused_is_transient(
        self, adapter_factory: AdapterFactory, unreachable_config: dict[str, Any]
    ) -> None:
        adapter = await adapter_factory(**unreachable_config)
        with pytest.raises(TransientError):
            await adapter.send(self.outbound(adapter))

    # Admin checks and state

    async def test_check_returns_a_check_result(
        self, adapter_factory: AdapterFactory, send_fake: SendFake, unreachable_config: dict[str, Any]
    ) -> None:
        reachable = await (await adapter_factory()).check()
        assert isinstance(reachable, CheckResult)
        assert reachable.ok, reachable.detail
        unreachable = await (await adapter_factory(**unreachable_config)).check()
        assert isinstance(unreachable, CheckResult)
        assert not unreachable.ok
        assert unreachable.detail

    async def test_running_adapter_reports_its_state(
        self, core: Core, adapter_factory: AdapterFactory
    ) -> None:
        adapter = await adapter_factory()

        async def connected() -> bool:
            return (await core.store.get_channel_account(adapter.account.id)).state == "connected"

        # An adapter that connects in the background (IMAP login) says so once it has: under load
        # that can be a moment after start.
        await wait_until(connected, within=10.0, what="the adapter to report connected")
        await core.channels.stop_all()
        assert (await core.store.get_channel_account(adapter.account.id)).state == "stopped"
