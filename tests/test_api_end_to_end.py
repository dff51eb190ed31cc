"""End to end on the daemon as deployed (`aggregator serve` in a subprocess, set up with the CLI): a shop's
message through the API channel reaches the inbox and the live stream, an agent's reply reaches the
shop's callback, and the delivery status reaches the stream."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from fakes.callback import CallbackServer
from support.api import ApiClient
from support.app import SECRET, ApiSender
from support.daemon_process import DaemonProcess
from support.stream import open_sse

pytestmark = pytest.mark.timeout(90)


async def test_message_in_reply_out_and_delivery_status_live(tmp_path: Path, callback_server: CallbackServer) -> None:
    daemon = DaemonProcess(tmp_path / "site")
    try:
        channel_id = await daemon.add_api_channel("shop", SECRET, callback_server.url)
        user_id = await daemon.cli("user", "create", "--name", "Ada Agent", "--email", "ada@shop.test", "--role", "agent")
        token = await daemon.cli("token", "create", "--user", "ada@shop.test", "--name", "console")
        await daemon.start()
        async with aiohttp.ClientSession() as http:
            agent = ApiClient(http, daemon.base_url, token)
            shop = ApiSender(http, daemon.base_url, channel_id)
            async with open_sse(http, daemon.base_url, token) as sse:
                stored = await shop.post(
                    {
                        "external_id": "order-1001-msg-1",
                        "sender": {"id": "cust-42", "name": "Grace Hopper", "email": "grace@example.com"},
                        "subject": "Where is my parcel?",
                        "text": "Order 1001 has not arrived yet.",
                    }
                )
                assert stored.status == 202, stored.body
                conversation_id = stored.body["conversation_id"]
                created = await sse.until("message.created")
                assert created.data["conversation_id"] == conversation_id
                assert created.data["message_id"] == stored.body["message_id"]

                inbox = await agent.get("/conversations", assignee="none")
                assert [item["id"] for item in inbox.body["items"]] == [conversation_id]
                item = inbox.body["items"][0]
                assert item["contact"]["name"] == "Grace Hopper"
                assert item["subject"] == "Where is my parcel?"
                assert item["unread_count"] == 1
                found = await agent.get("/conversations", q="arrived")
                assert [i["id"] for i in found.body["items"]] == [conversation_id]

                taken = await agent.patch(f"/conversations/{conversation_id}", {"assignee_id": user_id})
                assert taken.body["assignee_id"] == user_id
                updated = await sse.until("conversation.updated")
                assert updated.data["changed"] == ["assignee_id"]

                reply = await agent.post(
                    f"/conversations/{conversation_id}/messages", {"text": "It left our warehouse today."}
                )
                assert reply.status == 202
                assert reply.body["delivery_status"] == "queued"
                delivered = await sse.until("message.delivery", within=15)
                assert delivered.data["message_id"] == reply.body["id"]
                assert delivered.data["delivery_status"] == "sent"

            deliveries = callback_server.deliveries
            assert [(d.body["text"], d.body["recipient"]["id"]) for d in deliveries] == [
                ("It left our warehouse today.", "cust-42")
            ]
            messages = (await agent.get(f"/conversations/{conversation_id}/messages")).body["items"]
            assert [(m["direction"], m["delivery_status"]) for m in messages] == [("in", None), ("out", "sent")]
            assert (await agent.post(f"/conversations/{conversation_id}/read")).status == 204
            assert (await agent.get(f"/conversations/{conversation_id}")).body["unread_count"] == 0
    finally:
        await daemon.close()
