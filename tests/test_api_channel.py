"""The generic API channel through a whole running daemon: signed JSON in over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.config import Settings
from aggregator.daemon import Daemon
from channels.api import sign
from support.app import (
    SECRET,
    ApiSender,
    Core,
    add_channel,
    closed_port,
    daemon_url,
    make_settings,
    running_daemon,
    sql,
)

pytestmark = pytest.mark.timeout(30)

MAX_BODY = 4096
MAX_ATTACHMENT = 100


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, http={"max_body_bytes": MAX_BODY}, max_attachment_bytes=MAX_ATTACHMENT)


@pytest.fixture
async def api(daemon: Daemon, http_session: aiohttp.ClientSession) -> ApiSender:
    assert daemon.bootstrap is not None
    channel_id = await add_channel(
        daemon.store, daemon.bootstrap.workspace.id, {"secret": SECRET}, name="shop"
    )
    return ApiSender(http_session, daemon_url(daemon), channel_id)


@pytest.fixture
async def api_fast(core: Core, http_session: aiohttp.ClientSession) -> ApiSender:
    """The same application and adapter, served without the rest of the daemon (no outbox workers to stop)."""
    return ApiSender(http_session, await core.serve(), await core.add_channel())


def payload(external_id: str = "ext-1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "external_id": external_id,
        "sender": {"id": "cust-42", "name": "Dana Buyer", "email": "dana@example.com"},
        "text": "Where is my order?",
    }
    body.update(fields)
    return body


async def test_signed_message_is_stored_and_answered_202_with_its_ids(api: ApiSender, daemon: Daemon) -> None:
    answer = await api.post(payload(subject="Order 1001"))

    assert answer.status == 202
    assert set(answer.body) == {"message_id", "conversation_id"}
    assert daemon.bootstrap is not None
    ws = daemon.bootstrap.workspace.id
    message = await daemon.store.get_message(answer.body["message_id"], ws)
    assert (message["conversation_id"], message["channel_account_id"]) == (
        answer.body["conversation_id"],
        api.channel_id,
    )
    assert (message["text"], message["subject"], message["external_id"], message["direction"]) == (
        "Where is my order?",
        "Order 1001",
        "ext-1",
        "in",
    )
    identity = await sql(daemon.store, "SELECT kind, address, display_name FROM identities")
    assert [tuple(r) for r in identity] == [("api", f"{api.channel_id}/cust-42", "Dana Buyer")]
    contact = await sql(daemon.store, "SELECT email FROM contacts")
    assert contact[0][0] == "dana@example.com"


async def test_repeat_answers_200_with_the_same_ids_and_stores_nothing_new(
    api: ApiSender, daemon: Daemon
) -> None:
    first = await api.post(payload())
    again = await api.post(payload(text="edited on the shop's side"))

    assert (first.status, again.status) == (202, 200)
    assert again.body == first.body
    assert await daemon.store.count_messages(api.channel_id) == 1


@pytest.mark.parametrize(
    ("signature", "code"),
    [
        (None, "signature_missing"),
        ("sha256=" + "0" * 64, "signature_invalid"),
        ("not-even-the-format", "signature_invalid"),
    ],
)
async def test_missing_or_bad_signature_is_401(
    api_fast: ApiSender, core: Core, signature: str | None, code: str
) -> None:
    answer = await api_fast.post(payload(), signature=signature)
    assert answer.status == 401
    assert answer.body["error"]["code"] == code
    assert await core.store.count_messages() == 0


async def test_signature_with_another_secret_or_over_other_bytes_is_401(
    api_fast: ApiSender, core: Core
) -> None:
    body = b'{"external_id":"e","sender":{"id":"c"},"text":"hi"}'
    wrong_key = await api_fast.post(body, signature=sign("another-secret-0123456789", body))
    other_bytes = await api_fast.post(body, signature=sign(SECRET, body + b" "))
    assert (wrong_key.status, other_bytes.status) == (401, 401)
    assert await core.store.count_messages() == 0


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"'])
async def test_invalid_json_is_400(api_fast: ApiSender, body: bytes) -> None:
    answer = await api_fast.post(body)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"external_id": None}, "external_id"),
        ({"external_id": ""}, "external_id"),
        ({"external_id": 17}, "external_id"),
        ({"sender": None}, "sender"),
        ({"sender": {"name": "no id"}}, "sender.id"),
        ({"sender": {"id": 5}}, "sender.id"),
        ({"text": None}, "text"),
        ({"text": ["a", "list"]}, "text"),
        ({"attachments": "not a list"}, "attachments"),
        ({"attachments": [{"data_base64": "aGk="}]}, "attachments.0.filename"),
        ({"sent_at": "yesterday"}, "sent_at"),
        ({"thread_id": 12}, "thread_id"),
    ],
)
async def test_wrong_types_and_missing_fields_are_400_naming_the_field(
    api_fast: ApiSender, core: Core, change: dict[str, Any], field: str
) -> None:
    body = payload()
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value

    answer = await api_fast.post(body)

    assert answer.status == 400
    assert answer.body["error"]["code"] == "invalid_field"
    assert answer.body["error"]["field"] == field
    assert field in answer.body["error"]["message"]
    assert await core.store.count_messages() == 0


async def chunked(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(0.01)


def long_message(length: int) -> bytes:
    return b'{"external_id":"e","sender":{"id":"c"},"text":"' + b"x" * length + b'"}'


async def test_body_over_the_limit_is_413_and_nothing_is_stored(api: ApiSender, daemon: Daemon) -> None:
    declared = await api.post(payload(text="x" * (MAX_BODY + 100)))
    assert declared.status == 413
    assert declared.body["error"]["code"] == "too_large"

    body = long_message(MAX_BODY * 2)  # chunked: no Content-Length to refuse it by
    headers = {"Content-Type": "application/json", "X-Aggregator-Signature": sign(SECRET, body)}
    async with api.http.post(api.url, data=chunked(body, 1024), headers=headers) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "too_large"

    assert await daemon.store.count_messages() == 0


async def test_chunked_body_within_the_limit_is_read_whole(api_fast: ApiSender, core: Core) -> None:
    """A body that arrives in several pieces is verified and parsed whole, not just its first piece."""
    body = long_message(MAX_BODY - 200)
    headers = {"Content-Type": "application/json", "X-Aggregator-Signature": sign(SECRET, body)}
    async with api_fast.http.post(api_fast.url, data=chunked(body, 512), headers=headers) as response:
        assert response.status == 202, await response.text()
    assert await core.store.count_messages() == 1


async def test_unknown_channel_or_wrong_kind_or_path_is_404(api: ApiSender) -> None:
    unknown = await ApiSender(api.http, api.base_url, "01UNKNOWNCHANNEL000000000").post(payload())
    wrong_kind = await ApiSender(api.http, api.base_url, api.channel_id, kind="email").post(payload())
    assert (unknown.status, wrong_kind.status) == (404, 404)
    assert unknown.body["error"]["code"] == wrong_kind.body["error"]["code"] == "unknown_channel"
    async with api.http.post(api.url.replace("/messages", "/elsewhere"), data=b"{}") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with api.http.get(api.url) as response:
        assert response.status == 405


async def test_attachments_are_decoded_and_stored(api_fast: ApiSender, core: Core) -> None:
    content = b"%PDF-1.4 receipt"
    answer = await api_fast.post(
        payload(
            attachments=[
                {
                    "filename": "receipt.pdf",
                    "content_type": "application/pdf",
                    "data_base64": base64.b64encode(content).decode(),
                }
            ]
        )
    )
    assert answer.status == 202
    rows = await sql(
        core.store,
        "SELECT filename, content_type, size, sha256 FROM attachments WHERE message_id = :id",
        id=answer.body["message_id"],
    )
    digest = hashlib.sha256(content).hexdigest()
    assert [tuple(r) for r in rows] == [("receipt.pdf", "application/pdf", len(content), digest)]
    assert core.attachments.path_for(digest).read_bytes() == content


async def test_attachment_over_the_limit_is_413_naming_the_field(api_fast: ApiSender, core: Core) -> None:
    big = base64.b64encode(b"z" * (MAX_ATTACHMENT + 1)).decode()
    answer = await api_fast.post(payload(attachments=[{"filename": "big.bin", "data_base64": big}]))
    assert answer.status == 413
    assert answer.body["error"]["code"] == "attachment_too_large"
    assert answer.body["error"]["field"] == "attachments.0.data_base64"
    assert await core.store.count_messages() == 0


async def test_invalid_base64_is_400_naming_the_field(api_fast: ApiSender, core: Core) -> None:
    answer = await api_fast.post(
        payload(
            attachments=[
                {"filename": "ok.txt", "data_base64": base64.b64encode(b"fine").decode()},
                {"filename": "bad.txt", "data_base64": "not base64 at all!"},
            ]
        )
    )
    assert answer.status == 400
    assert answer.body["error"]["field"] == "attachments.1.data_base64"
    assert await core.store.count_messages() == 0


async def test_sent_at_needs_a_time_zone(api_fast: ApiSender, core: Core) -> None:
    naive = await api_fast.post(payload("e1", sent_at="2026-03-01T10:00:00"))
    assert naive.status == 400
    assert naive.body["error"]["field"] == "sent_at"

    aware = await api_fast.post(payload("e2", sent_at="2026-03-01T10:00:00+02:00"))
    assert aware.status == 202
    stored = await core.store.get_message(aware.body["message_id"], core.workspace.id)
    assert stored["sent_at"].isoformat() == "2026-03-01T08:00:00+00:00"


async def test_unknown_fields_are_kept_in_extra(api_fast: ApiSender, core: Core) -> None:
    body = payload(order_ref="A-1001", cart={"items": 3})
    body["sender"]["loyalty"] = "gold"
    answer = await api_fast.post(body)
    assert answer.status == 202
    stored = await core.store.get_message(answer.body["message_id"], core.workspace.id)
    assert stored["extra"] == {"order_ref": "A-1001", "cart": {"items": 3}, "sender": {"loyalty": "gold"}}


async def test_thread_id_keeps_one_conversation_and_is_kept_for_replies(
    api_fast: ApiSender, core: Core
) -> None:
    one = await api_fast.post(payload("e1", thread_id="order-1001"))
    two = await api_fast.post(payload("e2", thread_id="order-1001"))
    other = await api_fast.post(payload("e3", thread_id="order-2002"))
    assert one.body["conversation_id"] == two.body["conversation_id"] != other.body["conversation_id"]
    refs = await sql(
        core.store, "SELECT thread_ref FROM conversations WHERE id = :id", id=one.body["conversation_id"]
    )
    assert refs[0][0] == "order-1001"


async def test_the_same_sender_id_from_two_api_channels_is_two_contacts(
    api_fast: ApiSender, core: Core
) -> None:
    other_shop = ApiSender(api_fast.http, api_fast.base_url, await core.add_channel())
    one = await api_fast.post(payload("e1"))
    two = await other_shop.post(payload("e1"))
    assert (one.status, two.status) == (202, 202)
    assert one.body["conversation_id"] != two.body["conversation_id"]
    contacts = await sql(core.store, "SELECT COUNT(*) FROM contacts")
    assert contacts[0][0] == 2


async def test_health_readiness_and_metrics(api: ApiSender, daemon: Daemon) -> None:
    async with api.http.get(f"{api.base_url}/healthz") as response:
        assert response.status == 200
    async with api.http.get(f"{api.base_url}/readyz") as response:
        assert response.status == 200
        assert await response.json() == {"ready": True, "checks": {"store": "ok", "bus": "ok"}}

    await api.post(payload("e1"))
    await api.post(payload("e1"))
    async with api.http.get(f"{api.base_url}/metrics") as response:
        assert response.status == 200
        metrics = await response.text()
    assert 'aggregator_messages_in_total{channel="api"} 1.0' in metrics
    assert 'aggregator_duplicates_in_total{channel="api"} 1.0' in metrics


async def test_with_redis_down_readyz_is_503_naming_the_bus_and_messages_are_still_accepted(
    tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    settings = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    async with running_daemon(settings) as daemon:
        base = daemon_url(daemon)
        async with http_session.get(f"{base}/readyz") as response:
            assert response.status == 503
            ready = await response.json()
        async with http_session.get(f"{base}/healthz") as response:
            assert response.status == 200
        # SQL is the record: a bus that cannot publish must not make the daemon refuse or lose a message.
        assert daemon.bootstrap is not None
        channel_id = await add_channel(daemon.store, daemon.bootstrap.workspace.id, {"secret": SECRET})
        answer = await ApiSender(http_session, base, channel_id).post(payload())
        assert answer.status == 202
        assert await daemon.store.count_messages() == 1
    assert ready["ready"] is False
    assert ready["checks"]["store"] == "ok"
    assert ready["checks"]["bus"].startswith("unavailable")
