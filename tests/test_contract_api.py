"""The generic API channel against the adapter contract, plus what is particular to it."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from contract import DEFAULT_STATUS_ERRORS, AdapterContract, InboundDelivery, SendFake
from pydantic import SecretStr

from channels.api import ApiChannel
from channels.base import ChannelAdapter, ChannelConfig, ChannelError, PermanentError
from fakes.callback import CallbackServer
from support.app import SECRET, ApiSender, Core, closed_port

pytestmark = pytest.mark.timeout(30)


class TestApiChannelContract(AdapterContract):
    adapter_class = ApiChannel
    secret_fields = frozenset({"secret"})
    inbound_sender = "shop-customer-7"

    def expected_address(self, adapter: ChannelAdapter[Any], sender: str) -> str:
        return f"{adapter.account.id}/{sender}"
    # The API channel has no credentials of its own at the callback: a 401/403 there is the shop's
    # endpoint refusing this message, not a reason to stop the channel.
    status_errors: dict[int, type[ChannelError]] = {
        **DEFAULT_STATUS_ERRORS,
        401: PermanentError,
        403: PermanentError,
    }

    @pytest.fixture
    def valid_config(self, callback_server: CallbackServer) -> dict[str, Any]:
        return {"secret": SECRET, "callback_url": callback_server.url, "timeout_seconds": 5}

    @pytest.fixture
    def invalid_configs(self) -> list[tuple[dict[str, Any], str]]:
        return [
            ({}, "secret"),
            ({"secret": "too-short"}, "secret"),
            ({"secret": 1234567890123456789}, "secret"),
            ({"secret": SECRET, "callback_url": "not a url"}, "callback_url"),
            ({"secret": SECRET, "callback_url": "ftp://shop.example/hook"}, "callback_url"),
            ({"secret": SECRET, "timeout_seconds": 0}, "timeout_seconds"),
            ({"secret": SECRET, "timeout_seconds": "soon"}, "timeout_seconds"),
        ]

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return {"callback_url": f"http://127.0.0.1:{closed_port()}/hook"}

    @pytest.fixture
    def timeout_config(self) -> dict[str, Any]:
        return {"timeout_seconds": 0.3}

    @pytest.fixture
    def send_fake(self, callback_server: CallbackServer) -> SendFake:
        return callback_server

    @pytest.fixture
    def inbound_delivery(self, core: Core, http_session: aiohttp.ClientSession) -> InboundDelivery:
        async def deliver(adapter: Any, external_id: str, sender: str, text: str) -> None:
            sender_ = ApiSender(http_session, await core.serve(), adapter.account.id)
            answer = await sender_.post({"external_id": external_id, "sender": {"id": sender}, "text": text})
            assert answer.status in (200, 202), answer

        return deliver


async def test_send_posts_a_signed_reply_with_the_message_id_as_idempotency_key(
    core: Core, callback_server: CallbackServer
) -> None:
    contract = TestApiChannelContract()
    adapter = await core.adapter(
        await core.add_channel({"secret": SECRET, "callback_url": callback_server.url})
    )
    message = contract.outbound(adapter, "On its way")

    result = await adapter.send(message)

    assert result.external_id == "cb-1"
    [delivery] = callback_server.deliveries
    assert delivery.body == {
        "message_id": message.message_id,
        "conversation_id": message.conversation_id,
        "thread_id": "contract-thread",
        "recipient": {"id": contract.recipient_address},
        "text": "On its way",
    }
    assert delivery.idempotency_key == message.message_id
    assert callback_server.rejected_signatures == 0


async def test_reply_signed_with_another_secret_is_refused_by_the_shop(core: Core) -> None:
    shop = CallbackServer("the-shop-has-another-secret")
    await shop.start()
    try:
        adapter = await core.adapter(await core.add_channel({"secret": SECRET, "callback_url": shop.url}))
        with pytest.raises(PermanentError, match="401"):
            await adapter.send(TestApiChannelContract().outbound(adapter))
        assert shop.rejected_signatures == 1
    finally:
        await shop.close()


async def test_without_callback_url_sending_is_a_permanent_error_and_check_says_so(core: Core) -> None:
    adapter = await core.adapter(await core.add_channel({"secret": SECRET}))
    with pytest.raises(PermanentError, match="callback_url"):
        await adapter.send(TestApiChannelContract().outbound(adapter))
    checked = await adapter.check()
    assert checked.ok
    assert "callback_url" in checked.detail


def test_optional_secret_fields_count_as_secret() -> None:
    """secret_fields() names every field split_secrets() stores encrypted, optional ones included."""

    class MailLikeConfig(ChannelConfig):
        host: str
        password: SecretStr
        smtp_password: SecretStr | None = None

    config = MailLikeConfig.parse(
        "mail-like", {"host": "imap.example", "password": "p1", "smtp_password": "p2"}
    )
    _, secrets = config.split_secrets()
    assert MailLikeConfig.secret_fields() == set(secrets) == {"password", "smtp_password"}
