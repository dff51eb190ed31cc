"""The Telegram channel in the real daemon process: kill -9 while 500 updates are pending."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from fakes.telegram import FakeTelegram
from support.api import ApiClient
from support.daemon_process import DaemonProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


async def test_kill_9_with_500_updates_pending_stores_each_exactly_once(
    tmp_path: Path, fake: FakeTelegram
) -> None:
    daemon = DaemonProcess(tmp_path / "site")
    try:
        settings = {
            "bot_token": fake.token,
            "api_base_url": fake.base_url,
            "file_base_url": fake.file_base_url,
            "poll_timeout_seconds": 1,
        }
        args = ["channel", "add", "telegram", "--name", "bot"]
        for key, value in settings.items():
            args += ["--set", f"{key}={value}"]
        channel_id = await daemon.cli(*args)
        # 500 customers' messages waiting at Telegram; each getUpdates (100 at most) answers slowly,
        # so the kill lands between batches or in the middle of storing one.
        updates = [
            fake.push_message(1_000_000 + n % 50, f"question number {n}", message_id=10_000 + n)
            for n in range(500)
        ]
        fake.poll_delay = 0.3
        await daemon.start()

        deadline = time.monotonic() + 60
        while (stored := daemon.scalar("SELECT count(*) FROM messages")) == 0:
            assert time.monotonic() < deadline, daemon.log_tail()
            await asyncio.sleep(0.005)
        await daemon.kill()
        at_kill = daemon.scalar("SELECT count(*) FROM messages")
        assert 0 < stored <= at_kill < 500, f"the kill came too late to test anything ({at_kill} stored)"
        assert fake.pending_updates(), "Telegram still holds the updates not confirmed"

        fake.poll_delay = 0.0
        await daemon.start()
        await fake.wait_confirmed(updates[-1]["update_id"], within=60)
        await daemon.wait_for("SELECT count(*) FROM messages", 500, 30)
        await asyncio.sleep(0.5)
        assert daemon.scalar("SELECT count(*) FROM messages") == 500
        assert daemon.scalar("SELECT count(DISTINCT external_id) FROM messages") == 500
        assert daemon.scalar("SELECT count(DISTINCT text) FROM messages") == 500
        assert daemon.scalar("SELECT count(*) FROM conversations") == 50
        offset = daemon.scalar(
            "SELECT value FROM channel_checkpoints WHERE channel_account_id = ? AND key = 'offset'", channel_id
        )
        assert int(offset) == updates[-1]["update_id"] + 1
    finally:
        await daemon.close()


async def test_customer_message_in_agent_reply_out_through_the_api(tmp_path: Path, fake: FakeTelegram) -> None:
    daemon = DaemonProcess(tmp_path / "site")
    try:
        args = ["channel", "add", "telegram", "--name", "bot"]
        for key, value in {
            "bot_token": fake.token,
            "api_base_url": fake.base_url,
            "file_base_url": fake.file_base_url,
            "poll_timeout_seconds": 1,
        }.items():
            args += ["--set", f"{key}={value}"]
        await daemon.cli(*args)
        await daemon.cli("user", "create", "--name", "Ada Agent", "--email", "ada@shop.test", "--role", "agent")
        token = await daemon.cli("token", "create", "--user", "ada@shop.test", "--name", "console")
        await daemon.start()
        customer = 424_242_001
        first = fake.push_message(customer, "Wo ist mein Paket?", first_name="Grete", language_code="de")
        await fake.wait_confirmed(first["update_id"], within=30)
        async with aiohttp.ClientSession() as http:
            agent = ApiClient(http, daemon.base_url, token)
            inbox = await agent.get("/conversations")
            [conversation] = inbox.body["items"]
            assert conversation["contact"]["name"] == "Grete"
            reply = await agent.post(f"/conversations/{conversation['id']}/messages", {"text": "Es kommt morgen."})
            assert reply.status == 202, reply.body
            deadline = time.monotonic() + 30
            while not fake.sent:
                assert time.monotonic() < deadline, daemon.log_tail()
                await asyncio.sleep(0.05)
            [sent] = fake.sent
            assert (sent.chat_id, sent.text) == (customer, "Es kommt morgen.")
            assert sent.reply_to_message_id == first["message"]["message_id"]
            await daemon.wait_for("SELECT count(*) FROM messages WHERE delivery_status = 'sent'", 1, 30)

            # The customer blocks the bot: the next reply fails for good, with the reason, and the
            # contact is marked.
            fake.blocked_chats.add(customer)
            again = await agent.post(f"/conversations/{conversation['id']}/messages", {"text": "Noch Fragen?"})
            assert again.status == 202
            await daemon.wait_for("SELECT count(*) FROM messages WHERE delivery_status = 'failed'", 1, 30)
            error = daemon.scalar("SELECT delivery_error FROM messages WHERE delivery_status = 'failed'")
            assert "blocked the bot" in error
            contact = await agent.get(f"/contacts/{conversation['contact']['id']}")
            [identity] = contact.body["identities"]
            assert identity["blocked_at"] is not None
    finally:
        await daemon.close()
