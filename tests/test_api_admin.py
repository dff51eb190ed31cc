"""Admin endpoints of /api/v1 against a running daemon: channels, users, teams and tokens."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from aggregator.daemon import Daemon
from aggregator.model import ConnectionState, Role, new_id
from aggregator.store import Store
from aggregator.tokens import hash_token
from fakes.callback import CallbackServer
from support.api import ApiClient, Reply, user_with_token
from support.app import SECRET, ApiSender, closed_port, daemon_url, running_daemon

pytestmark = pytest.mark.timeout(60)

NEW_SECRET = "another-shared-secret-9876543210"


@dataclass
class Admin:
    """A running daemon, an admin of its default workspace and a client acting as that admin."""

    daemon: Daemon
    http: aiohttp.ClientSession
    workspace_id: str
    user_id: str
    client: ApiClient

    @property
    def store(self) -> Store:
        return self.daemon.store

    @property
    def url(self) -> str:
        return daemon_url(self.daemon)

    def sender(self, channel_id: str, secret: str = SECRET) -> ApiSender:
        return ApiSender(self.http, self.url, channel_id, secret)

    async def client_for(self, role: Role, workspace_id: str | None = None) -> tuple[str, ApiClient]:
        user_id, token = await user_with_token(self.store, workspace_id or self.workspace_id, role)
        return user_id, self.client.as_token(token)

    async def other_workspace_admin(self) -> ApiClient:
        other = await self.store.create_workspace(f"other-{new_id()}")
        return (await self.client_for(Role.ADMIN, other.id))[1]

    async def channel(self, name: str = "shop", **config: Any) -> dict[str, Any]:
        reply = await self.client.post(
            "/channels", {"kind": "api", "name": name, "config": {"secret": SECRET, **config}}
        )
        assert reply.status == 201, reply.body
        body: dict[str, Any] = reply.body
        return body


@pytest.fixture
async def admin(daemon: Daemon, http_session: aiohttp.ClientSession) -> Admin:
    assert daemon.bootstrap is not None
    workspace_id = daemon.bootstrap.workspace.id
    user_id, token = await user_with_token(daemon.store, workspace_id, Role.ADMIN, name="Ada Admin")
    return Admin(
        daemon, http_session, workspace_id, user_id, ApiClient(http_session, daemon_url(daemon), token)
    )


def text_of(reply: Reply) -> str:
    return json.dumps(reply.body) if not isinstance(reply.body, bytes) else reply.body.decode()


def message(external_id: str = "m-1", text: str = "Where is my parcel?") -> dict[str, Any]:
    return {"external_id": external_id, "sender": {"id": "cust-1", "name": "Dana"}, "text": text}


def assert_error(reply: Reply, status: int, field: str | None = None, code: str | None = None) -> None:
    assert reply.status == status, reply.body
    error = reply.body["error"]
    if field is not None:
        assert error.get("field") == field, error
    if code is not None:
        assert error["code"] == code, error


# --------------------------------------------------------------------------------------------------
# Channels


async def test_channel_crud_never_returns_or_logs_the_secret(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await admin.client.post(
        "/channels",
        {
            "kind": "api",
            "name": "shop",
            "config": {"secret": SECRET, "callback_url": "https://shop.example/hook"},
        },
    )
    assert created.status == 201, created.body
    channel = created.body
    assert channel["kind"] == "api" and channel["name"] == "shop" and channel["enabled"] is True
    assert channel["config"]["callback_url"] == "https://shop.example/hook"
    assert "secret" not in channel["config"]
    assert channel["secrets_set"] == ["secret"]
    assert channel["state"] == ConnectionState.CONNECTED  # started at once, in this process
    path = f"/channels/{channel['id']}"

    got = await admin.client.get(path)
    listed = await admin.client.get("/channels")
    patched = await admin.client.patch(path, {"name": "shop-eu", "config": {"timeout_seconds": 5}})
    assert got.status == listed.status == patched.status == 200
    assert got.body["id"] == channel["id"]
    assert [item["id"] for item in listed.body["items"]] == [channel["id"]]
    assert patched.body["name"] == "shop-eu" and patched.body["config"]["timeout_seconds"] == 5
    assert patched.body["secrets_set"] == ["secret"]
    check = await admin.client.post(f"{path}/check")
    assert check.status == 200
    for reply in (created, got, listed, patched, check):
        assert SECRET not in text_of(reply)
    assert SECRET not in caplog.text
    assert "shop-eu" in caplog.text or channel["id"] in caplog.text  # the logs were captured


async def test_a_channel_added_through_the_api_receives_at_once_and_a_deleted_one_is_gone(
    admin: Admin,
) -> None:
    channel = await admin.channel()
    sender = admin.sender(channel["id"])

    accepted = await sender.post(message())
    assert accepted.status == 202, accepted.body
    conversation_id = accepted.body["conversation_id"]

    deleted = await admin.client.delete(f"/channels/{channel['id']}")
    assert deleted.status == 204
    refused = await sender.post(message("m-2"))
    assert (refused.status, refused.body["error"]["code"]) == (404, "unknown_channel")
    assert admin.daemon.channels is not None and admin.daemon.channels.running(channel["id"]) is None
    assert_error(await admin.client.get(f"/channels/{channel['id']}"), 404, code="not_found")
    assert_error(await admin.client.patch(f"/channels/{channel['id']}", {"enabled": True}), 404)
    assert (await admin.client.get("/channels")).body["items"] == []

    # The conversation and its message stay; the name is free for a new channel.
    kept = await admin.client.get(f"/conversations/{conversation_id}")
    assert kept.status == 200 and kept.body["message_count"] == 1
    again = await admin.channel()
    assert again["id"] != channel["id"]

    # Even a channel named as a deleted one would be renamed does not block the delete.
    squatter = await admin.channel(f"shop (deleted {again['id']})")
    assert (await admin.client.delete(f"/channels/{again['id']}")).status == 204
    assert (await admin.client.get(f"/channels/{squatter['id']}")).body["name"] == squatter["name"]


async def test_patch_config_keeps_the_secret_and_a_new_secret_applies_at_once(
    admin: Admin, callback_server: CallbackServer
) -> None:
    channel = await admin.channel()
    path = f"/channels/{channel['id']}"

    patched = await admin.client.patch(path, {"config": {"callback_url": callback_server.url}})
    assert patched.status == 200, patched.body
    assert patched.body["config"]["callback_url"] == callback_server.url
    assert patched.body["secrets_set"] == ["secret"]
    assert channels_of(admin).running(channel["id"]).config.callback_url is not None
    assert (await admin.sender(channel["id"]).post(message())).status == 202  # the old secret still holds

    rotated = await admin.client.patch(path, {"config": {"secret": NEW_SECRET}})
    assert rotated.status == 200 and NEW_SECRET not in text_of(rotated)
    assert rotated.body["config"]["callback_url"] == callback_server.url  # plain settings kept too
    old = await admin.sender(channel["id"]).post(message("m-2"))
    assert (old.status, old.body["error"]["code"]) == (401, "signature_invalid")
    assert (await admin.sender(channel["id"], NEW_SECRET).post(message("m-3"))).status == 202

    cleared = await admin.client.patch(path, {"config": {"callback_url": None}})
    assert cleared.status == 200 and cleared.body["config"]["callback_url"] is None


async def test_disabling_a_channel_stops_it_and_enabling_starts_it(admin: Admin) -> None:
    channel = await admin.channel()
    path = f"/channels/{channel['id']}"

    disabled = await admin.client.patch(path, {"enabled": False})
    assert disabled.status == 200 and disabled.body["enabled"] is False
    assert disabled.body["state"] == ConnectionState.STOPPED
    assert (await admin.sender(channel["id"]).post(message())).status == 404

    enabled = await admin.client.patch(path, {"enabled": True})
    assert enabled.body["state"] == ConnectionState.CONNECTED
    assert (await admin.sender(channel["id"]).post(message())).status == 202


async def test_check_returns_the_verdict_and_records_a_failure_as_the_state(
    admin: Admin, callback_server: CallbackServer
) -> None:
    channel = await admin.channel(callback_url=f"http://127.0.0.1:{closed_port()}/hook")
    path = f"/channels/{channel['id']}"

    failed = await admin.client.post(f"{path}/check")
    assert failed.status == 200
    assert failed.body["ok"] is False and "unreachable" in failed.body["detail"]
    state = (await admin.client.get(path)).body
    assert state["state"] == ConnectionState.UNKNOWN_ERROR
    assert state["state_detail"].startswith("check failed: ")

    await admin.client.patch(path, {"config": {"callback_url": callback_server.url}})
    passed = await admin.client.post(f"{path}/check")
    assert passed.body == {"ok": True, "detail": f"callback {callback_server.url} answered HEAD with 200"}
    assert (await admin.client.get(path)).body["state"] == ConnectionState.CONNECTED

    # An error the adapter reported (e.g. credentials refused, then fixed at the service's end): a
    # passing check restarts the channel, which reports its own state again.
    await admin.store.set_channel_state(channel["id"], ConnectionState.BAD_CREDENTIALS, "refused")
    assert (await admin.client.post(f"{path}/check")).body["ok"] is True
    recovered = (await admin.client.get(path)).body
    assert (recovered["state"], recovered["state_detail"]) == (ConnectionState.CONNECTED, None)

    # A disabled channel keeps its `stopped` state whatever a check finds.
    await admin.client.patch(
        path, {"enabled": False, "config": {"callback_url": f"http://127.0.0.1:{closed_port()}/"}}
    )
    assert (await admin.client.post(f"{path}/check")).body["ok"] is False
    assert (await admin.client.get(path)).body["state"] == ConnectionState.STOPPED


async def test_channel_bodies_are_validated_naming_the_field(admin: Admin) -> None:
    unknown_kind = await admin.client.post("/channels", {"kind": "pigeon", "name": "coo", "config": {}})
    assert_error(unknown_kind, 400, "kind")
    assert (
        "pigeon" in unknown_kind.body["error"]["message"] and "api" in unknown_kind.body["error"]["message"]
    )

    short = await admin.client.post(
        "/channels", {"kind": "api", "name": "shop", "config": {"secret": "tiny-secret"}}
    )
    assert_error(short, 400, "config.secret", "invalid_field")
    assert "16 characters" in short.body["error"]["message"]
    assert "tiny-secret" not in text_of(short)

    extra = await admin.client.post(
        "/channels", {"kind": "api", "name": "shop", "config": {"secret": SECRET, "colour": "red"}}
    )
    assert_error(extra, 400, "config.colour")
    assert_error(
        await admin.client.post("/channels", {"kind": "api", "config": {}}), 400, "name", "missing_field"
    )
    assert_error(
        await admin.client.post("/channels", {"kind": "api", "name": "x", "config": {}, "owner": "me"}),
        400,
        "owner",
        "unknown_field",
    )
    assert_error(
        await admin.client.post("/channels", {"kind": "api", "name": "x", "config": []}), 400, "config"
    )

    channel = await admin.channel()
    assert_error(await admin.client.patch(f"/channels/{channel['id']}", {"name": None}), 400, "name")
    assert_error(
        await admin.client.patch(f"/channels/{channel['id']}", {"config": {"secret": "short"}}),
        400,
        "config.secret",
    )
    assert_error(await admin.client.patch(f"/channels/{channel['id']}", {"kind": "api"}), 400, "kind")
    # A failed PATCH changed nothing: the old secret is still the one the channel checks.
    assert (await admin.sender(channel["id"]).post(message())).status == 202


async def test_duplicate_channel_name_is_409(admin: Admin) -> None:
    await admin.channel("shop")
    other = await admin.channel("outlet")
    assert_error(
        await admin.client.post("/channels", {"kind": "api", "name": "shop", "config": {"secret": SECRET}}),
        409,
        "name",
        "conflict",
    )
    assert_error(
        await admin.client.patch(f"/channels/{other['id']}", {"name": "shop"}), 409, "name", "conflict"
    )


# --------------------------------------------------------------------------------------------------
# Users


async def test_user_crud(admin: Admin) -> None:
    created = await admin.client.post(
        "/users",
        {
            "name": "Bea Agent",
            "email": "bea@shop.example",
            "role": "agent",
            "languages": ["de", "en"],
            "capacity": 5,
        },
    )
    assert created.status == 201, created.body
    user = created.body
    assert (user["name"], user["email"], user["role"], user["languages"], user["capacity"]) == (
        "Bea Agent",
        "bea@shop.example",
        "agent",
        ["de", "en"],
        5,
    )
    assert user["active"] is True and user["deactivated_at"] is None
    got = await admin.client.get(f"/users/{user['id']}")
    assert got.status == 200 and got.body == user
    listed = await admin.client.get("/users")
    assert user["id"] in [item["id"] for item in listed.body["items"]]

    patched = await admin.client.patch(
        f"/users/{user['id']}", {"name": "Bea B.", "capacity": 8, "languages": ["fr"]}
    )
    assert patched.status == 200
    assert (patched.body["name"], patched.body["capacity"], patched.body["languages"]) == (
        "Bea B.",
        8,
        ["fr"],
    )
    assert patched.body["email"] == "bea@shop.example"
    assert patched.body["signature"] is None
    signed = await admin.client.patch(f"/users/{user['id']}", {"signature": "Bea\nCustomer care"})
    assert signed.status == 200 and signed.body["signature"] == "Bea\nCustomer care"
    assert (await admin.client.get(f"/users/{user['id']}")).body["signature"] == "Bea\nCustomer care"
    cleared = await admin.client.patch(f"/users/{user['id']}", {"signature": ""})
    assert cleared.status == 200 and cleared.body["signature"] is None


async def test_user_bodies_are_validated_and_emails_are_unique(admin: Admin) -> None:
    body = {"name": "Cy", "email": "cy@shop.example", "role": "agent"}
    assert (await admin.client.post("/users", body)).status == 201
    assert_error(await admin.client.post("/users", body), 409, "email", "conflict")
    assert_error(await admin.client.post("/users", {**body, "email": "not an email"}), 400, "email")
    assert_error(await admin.client.post("/users", {**body, "email": "d@x", "role": "boss"}), 400, "role")
    assert_error(
        await admin.client.post("/users", {**body, "email": "e@x", "languages": ["english!"]}),
        400,
        "languages.0",
    )
    assert_error(await admin.client.post("/users", {**body, "email": "f@x", "capacity": -1}), 400, "capacity")
    other = await admin.client.post("/users", {**body, "email": "g@x"})
    assert_error(
        await admin.client.patch(f"/users/{other.body['id']}", {"email": "cy@shop.example"}), 409, "email"
    )
    assert_error(await admin.client.patch(f"/users/{other.body['id']}", {"role": None}), 400, "role")


async def test_a_role_change_applies_to_the_users_tokens(admin: Admin) -> None:
    user_id, agent = await admin.client_for(Role.AGENT)
    assert_error(await agent.get("/users"), 403, code="forbidden")

    promoted = await admin.client.patch(f"/users/{user_id}", {"role": "admin"})
    assert promoted.status == 200 and promoted.body["role"] == "admin"
    assert (await agent.get("/users")).status == 200
    [token] = (await admin.client.get("/tokens", user_id=user_id)).body["items"]
    assert token["role"] == "admin"


async def test_deactivating_a_user_revokes_its_tokens_and_unassigns_its_conversations(admin: Admin) -> None:
    user_id, agent = await admin.client_for(Role.AGENT)
    channel = await admin.channel()
    accepted = await admin.sender(channel["id"]).post(message())
    conversation_id = accepted.body["conversation_id"]
    assigned = await admin.client.patch(f"/conversations/{conversation_id}", {"assignee_id": user_id})
    assert assigned.status == 200 and assigned.body["assignee_id"] == user_id
    team = await admin.client.post("/teams", {"name": "EU", "member_ids": [user_id]})
    assert (await agent.get("/conversations")).status == 200

    deactivated = await admin.client.delete(f"/users/{user_id}")
    assert deactivated.status == 204
    assert_error(await agent.get("/conversations"), 401, code="token_invalid")
    assert (await admin.client.get(f"/conversations/{conversation_id}")).body["assignee_id"] is None
    assert (await admin.client.get(f"/teams/{team.body['id']}")).body["member_ids"] == []
    assert user_id not in [u["id"] for u in (await admin.client.get("/users")).body["items"]]
    everyone = await admin.client.get("/users", include_deactivated="true")
    [gone] = [u for u in everyone.body["items"] if u["id"] == user_id]
    assert gone["active"] is False and gone["deactivated_at"] is not None
    assert_error(await admin.client.get(f"/users/{user_id}"), 404)
    shown = await admin.client.get(f"/users/{user_id}", include_deactivated="true")
    assert shown.status == 200 and shown.body["active"] is False
    assert_error(await admin.client.patch(f"/users/{user_id}", {"capacity": 3}), 404)
    assert_error(await admin.client.delete(f"/users/{user_id}"), 404)
    # A deactivated user can neither get a token nor join a team.
    assert_error(await admin.client.post("/tokens", {"user_id": user_id}), 400, "user_id")
    assert_error(
        await admin.client.post("/teams", {"name": "US", "member_ids": [user_id]}), 400, "member_ids"
    )


async def test_an_admin_cannot_deactivate_themself_nor_leave_the_workspace_without_admin(
    admin: Admin,
) -> None:
    assert_error(await admin.client.delete(f"/users/{admin.user_id}"), 409, code="own_user")
    assert (await admin.client.get("/users")).status == 200

    other = await admin.store.create_workspace("solo")
    solo_id, solo = await admin.client_for(Role.ADMIN, other.id)
    demoted = await solo.patch(f"/users/{solo_id}", {"role": "agent"})
    assert_error(demoted, 409, "role", "last_admin")
    assert (await solo.get("/users")).status == 200  # still an admin

    # With a second admin, the first may step down.
    second = await solo.post("/users", {"name": "Two", "email": "two@solo.example", "role": "admin"})
    assert (await solo.patch(f"/users/{solo_id}", {"role": "agent"})).status == 200
    assert_error(await solo.get("/users"), 403)
    assert second.status == 201


# --------------------------------------------------------------------------------------------------
# Teams


async def test_team_crud_and_delete_clears_conversations(admin: Admin) -> None:
    one, _ = await admin.client_for(Role.AGENT)
    two, _ = await admin.client_for(Role.AGENT)
    created = await admin.client.post("/teams", {"name": "DACH", "languages": ["de"], "member_ids": [one]})
    assert created.status == 201, created.body
    team = created.body
    assert (team["name"], team["languages"], team["member_ids"]) == ("DACH", ["de"], [one])
    assert (await admin.client.get(f"/teams/{team['id']}")).body == team
    assert [t["id"] for t in (await admin.client.get("/teams")).body["items"]] == [team["id"]]
    assert (await admin.client.get(f"/users/{one}")).body["team_ids"] == [team["id"]]

    patched = await admin.client.patch(f"/teams/{team['id']}", {"member_ids": [two, one], "name": "DACH+"})
    assert patched.status == 200
    assert sorted(patched.body["member_ids"]) == sorted([one, two]) and patched.body["name"] == "DACH+"
    assert patched.body["languages"] == ["de"]

    channel = await admin.channel()
    conversation_id = (await admin.sender(channel["id"]).post(message())).body["conversation_id"]
    await admin.client.patch(f"/conversations/{conversation_id}", {"team_id": team["id"]})
    assert (await admin.client.get(f"/conversations/{conversation_id}")).body["team_id"] == team["id"]

    assert (await admin.client.delete(f"/teams/{team['id']}")).status == 204
    assert_error(await admin.client.get(f"/teams/{team['id']}"), 404)
    assert (await admin.client.get(f"/conversations/{conversation_id}")).body["team_id"] is None
    assert (await admin.client.get(f"/users/{one}")).body["team_ids"] == []


async def test_team_names_are_unique_and_members_must_be_users_of_the_workspace(admin: Admin) -> None:
    assert (await admin.client.post("/teams", {"name": "EU"})).status == 201
    assert_error(await admin.client.post("/teams", {"name": "EU"}), 409, "name", "conflict")
    stranger, _ = await admin.client_for(Role.AGENT, (await admin.store.create_workspace("elsewhere")).id)
    for member in (stranger, "no-such-user"):
        refused = await admin.client.post("/teams", {"name": "US", "member_ids": [member]})
        assert_error(refused, 400, "member_ids", "invalid_field")
        assert member in refused.body["error"]["message"]
    assert_error(await admin.client.post("/teams", {"name": " "}), 400, "name")
    team = (await admin.client.get("/teams")).body["items"][0]
    nulled = await admin.client.patch(f"/teams/{team['id']}", {"name": None})
    assert_error(nulled, 400, "name", "invalid_field")
    # The validator's words, without pydantic's "Value error, " before them.
    assert nulled.body["error"]["message"] == "name: cannot be null; leave the field out to keep its value"


# --------------------------------------------------------------------------------------------------
# Tokens


async def test_token_crud_shows_the_token_once_and_revocation_is_immediate(admin: Admin) -> None:
    user_id, _ = await admin.client_for(Role.AGENT)
    created = await admin.client.post("/tokens", {"user_id": user_id, "name": "console"})
    assert created.status == 201, created.body
    token = created.body["token"]
    assert token.startswith("agg_")
    assert (created.body["role"], created.body["user_id"], created.body["name"]) == (
        "agent",
        user_id,
        "console",
    )
    assert created.body["user_name"].startswith("agent ")
    token_id = created.body["id"]

    as_token = admin.client.as_token(token)
    assert (await as_token.get("/conversations")).status == 200
    got = await admin.client.get(f"/tokens/{token_id}")
    listed = await admin.client.get("/tokens")
    renamed = await admin.client.patch(f"/tokens/{token_id}", {"name": "mobile"})
    assert renamed.body["name"] == "mobile"
    assert token_id in [item["id"] for item in listed.body["items"]]
    assert set(got.body) == {
        "id",
        "name",
        "role",
        "user_id",
        "user_name",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    for reply in (got, listed, renamed):
        assert token not in text_of(reply) and hash_token(token) not in text_of(reply)

    assert (await admin.client.delete(f"/tokens/{token_id}")).status == 204
    assert_error(await as_token.get("/conversations"), 401, code="token_invalid")
    assert token_id not in [item["id"] for item in (await admin.client.get("/tokens")).body["items"]]
    revoked = await admin.client.get("/tokens", include_revoked="true")
    [entry] = [item for item in revoked.body["items"] if item["id"] == token_id]
    assert entry["revoked_at"] is not None
    assert_error(await admin.client.get(f"/tokens/{token_id}"), 404)
    shown = await admin.client.get(f"/tokens/{token_id}", include_revoked="true")
    assert shown.status == 200 and shown.body["revoked_at"] == entry["revoked_at"]
    assert_error(await admin.client.patch(f"/tokens/{token_id}", {"name": "again"}), 404)
    assert_error(await admin.client.delete(f"/tokens/{token_id}"), 404)


async def test_token_bodies_are_validated(admin: Admin) -> None:
    assert_error(await admin.client.post("/tokens", {"name": "x"}), 400, "user_id", "missing_field")
    assert_error(await admin.client.post("/tokens", {"user_id": "nobody"}), 400, "user_id", "invalid_field")
    assert_error(await admin.client.post("/tokens", {"user_id": admin.user_id, "role": "admin"}), 400, "role")
    [mine] = (await admin.client.get("/tokens", user_id=admin.user_id)).body["items"]
    assert_error(await admin.client.patch(f"/tokens/{mine['id']}", {}), 400, "name", "missing_field")


# --------------------------------------------------------------------------------------------------
# Across resources


async def test_records_of_another_workspace_are_404_like_missing_ones(admin: Admin) -> None:
    channel = await admin.channel()
    user_id, _ = await admin.client_for(Role.AGENT)
    team = (await admin.client.post("/teams", {"name": "EU"})).body
    token = (await admin.client.post("/tokens", {"user_id": user_id})).body
    stranger = await admin.other_workspace_admin()

    records = {
        "channels": channel["id"],
        "users": user_id,
        "teams": team["id"],
        "tokens": token["id"],
    }
    patches = {
        "channels": {"enabled": False},
        "users": {"capacity": 1},
        "teams": {"name": "x"},
        "tokens": {"name": "x"},
    }
    for resource, record_id in records.items():
        for target in (record_id, "0" * 32):
            path = f"/{resource}/{target}"
            for reply in (
                await stranger.get(path),
                await stranger.patch(path, patches[resource]),
                await stranger.delete(path),
            ):
                assert_error(reply, 404, code="not_found")
        listed = await stranger.get(f"/{resource}")
        assert record_id not in [item["id"] for item in listed.body["items"]]
    assert_error(await stranger.post(f"/channels/{channel['id']}/check"), 404)
    assert_error(await stranger.post("/tokens", {"user_id": user_id}), 400, "user_id")

    # Nothing changed in the first workspace.
    assert (await admin.client.get(f"/channels/{channel['id']}")).body["enabled"] is True
    assert (await admin.client.get(f"/users/{user_id}")).body["active"] is True
    assert (await admin.client.get(f"/tokens/{token['id']}")).body["revoked_at"] is None
    assert (await admin.sender(channel["id"]).post(message())).status == 202


@pytest.mark.parametrize("role", [Role.AGENT, Role.SELLER])
async def test_only_admins_may_use_admin_endpoints_whatever_the_body(admin: Admin, role: Role) -> None:
    _, client = await admin.client_for(role)
    for method, path in [
        ("GET", "/channels"),
        ("POST", "/channels"),
        ("GET", "/users"),
        ("POST", "/users"),
        ("PATCH", f"/users/{admin.user_id}"),
        ("DELETE", f"/users/{admin.user_id}"),
        ("GET", "/teams"),
        ("POST", "/tokens"),
        ("DELETE", "/tokens/whatever"),
    ]:
        reply = await client.call(
            method, path, json_body={"bogus": True} if method in ("POST", "PATCH") else None
        )
        assert_error(reply, 403, code="forbidden")
    assert_error(await admin.client.as_token(None).get("/users"), 401, code="token_missing")


async def test_lists_are_cursor_paginated(admin: Admin) -> None:
    names = [f"team-{n}" for n in range(5)]
    for name in names:
        assert (await admin.client.post("/teams", {"name": name})).status == 201
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2"} if cursor is None else {"limit": "2", "cursor": cursor}
        page = await admin.client.get("/teams", **params)
        assert page.status == 200 and len(page.body["items"]) <= 2
        seen += [item["name"] for item in page.body["items"]]
        pages += 1
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (names, 3)
    assert_error(await admin.client.get("/teams", limit="101"), 400, "limit")
    assert_error(await admin.client.get("/users", cursor="garbage"), 400, "cursor", "invalid_cursor")
    assert_error(await admin.client.get("/tokens", colour="red"), 400, "colour", "unknown_field")


async def test_the_openapi_document_describes_the_admin_endpoints(admin: Admin) -> None:
    document = (await admin.client.as_token(None).get("/openapi.json")).body
    for path, methods in {
        "/api/v1/channels": {"get", "post"},
        "/api/v1/channels/{id}": {"get", "patch", "delete"},
        "/api/v1/channels/{id}/check": {"post"},
        "/api/v1/users": {"get", "post"},
        "/api/v1/users/{id}": {"get", "patch", "delete"},
        "/api/v1/teams": {"get", "post"},
        "/api/v1/teams/{id}": {"get", "patch", "delete"},
        "/api/v1/tokens": {"get", "post"},
        "/api/v1/tokens/{id}": {"get", "patch", "delete"},
    }.items():
        assert set(document["paths"][path]) == methods, path
        for operation in document["paths"][path].values():
            assert operation["x-roles"] == ["admin"]
    assert "409" in document["paths"]["/api/v1/channels"]["post"]["responses"]
    assert "token" in document["components"]["schemas"]["TokenCreated"]["properties"]


def channels_of(admin: Admin) -> Any:
    assert admin.daemon.channels is not None
    return admin.daemon.channels


@pytest.fixture
async def second_daemon(admin: Admin) -> AsyncIterator[Daemon]:
    """Another daemon process on the same database (as a CLI or a second node would change it)."""
    async with running_daemon(admin.daemon.settings) as other:
        yield other


async def test_changes_made_by_another_process_apply_on_refresh(admin: Admin, second_daemon: Daemon) -> None:
    channel = await admin.channel()
    assert second_daemon.channels is not None
    other = ApiSender(admin.http, daemon_url(second_daemon), channel["id"])
    assert (await other.post(message("m-1"))).status == 202  # started on first use there

    await admin.client.patch(f"/channels/{channel['id']}", {"config": {"secret": NEW_SECRET}})
    await second_daemon.channels.refresh()
    assert (await other.post(message("m-2"))).status == 401
    assert (
        await ApiSender(admin.http, daemon_url(second_daemon), channel["id"], NEW_SECRET).post(message("m-3"))
    ).status == 202

    await admin.client.delete(f"/channels/{channel['id']}")
    assert second_daemon.channels.running(channel["id"]) is not None
    await second_daemon.channels.refresh()
    assert second_daemon.channels.running(channel["id"]) is None
