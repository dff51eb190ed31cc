"""Business-hours calendars through the API of a real daemon: CRUD, validation, holidays, use by teams."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from sqlalchemy import insert

from aggregator.daemon import Daemon
from aggregator.hours import BusinessHours
from aggregator.model import Role, new_id, utcnow
from aggregator.store import schema as t
from support.api import ApiClient, Reply, user_with_token
from support.app import SECRET, add_channel, daemon_url

pytestmark = pytest.mark.timeout(60)

BUDAPEST_HOURS = {
    "timezone": "Europe/Budapest",
    "weekly": {day: ["08:00-16:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
    "closed": ["2026-12-24"],
    "holidays": {"country": "HU"},
}


@dataclass
class Office:
    daemon: Daemon
    workspace_id: str
    admin: ApiClient
    agent: ApiClient
    seller: ApiClient
    agent_id: str
    other_workspace_id: str
    other_admin: ApiClient


@pytest.fixture
async def office(daemon: Daemon, http_session: aiohttp.ClientSession) -> Office:
    assert daemon.bootstrap is not None
    workspace_id = daemon.bootstrap.workspace.id
    base = daemon_url(daemon)
    _, admin = await user_with_token(daemon.store, workspace_id, Role.ADMIN)
    agent_id, agent = await user_with_token(daemon.store, workspace_id, Role.AGENT)
    _, seller = await user_with_token(daemon.store, workspace_id, Role.SELLER)
    other = await daemon.store.create_workspace("other shop")
    _, other_admin = await user_with_token(daemon.store, other.id, Role.ADMIN)
    return Office(
        daemon,
        workspace_id,
        ApiClient(http_session, base, admin),
        ApiClient(http_session, base, agent),
        ApiClient(http_session, base, seller),
        agent_id,
        other.id,
        ApiClient(http_session, base, other_admin),
    )


def error_of(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    error: dict[str, Any] = reply.body["error"]
    assert error["code"] == code, error
    return error


async def created(client: ApiClient, name: str = "Budapest office", hours: Any = None) -> dict[str, Any]:
    reply = await client.post(
        "/calendars", {"name": name, "hours": BUDAPEST_HOURS if hours is None else hours}
    )
    assert reply.status == 201, reply.body
    body: dict[str, Any] = reply.body
    return body


async def test_create_read_update_delete(office: Office) -> None:
    calendar = await created(office.admin)
    assert calendar["name"] == "Budapest office"
    assert calendar["hours"]["timezone"] == "Europe/Budapest"
    assert calendar["hours"]["holidays"] == {"country": "HU", "subdivision": None}
    assert calendar["hours"]["closed"] == ["2026-12-24"]
    assert calendar["created_at"] == calendar["updated_at"]

    # Staff read: agents too.
    listed = await office.agent.get("/calendars")
    assert listed.status == 200 and [c["id"] for c in listed.body["items"]] == [calendar["id"]]
    one = await office.agent.get(f"/calendars/{calendar['id']}")
    assert one.status == 200 and one.body == calendar

    renamed = await office.admin.patch(f"/calendars/{calendar['id']}", {"name": "Budapest"})
    assert renamed.status == 200, renamed.body
    assert renamed.body["name"] == "Budapest" and renamed.body["hours"] == calendar["hours"]
    assert renamed.body["updated_at"] > calendar["updated_at"]
    replaced = await office.admin.patch(f"/calendars/{calendar['id']}", {"hours": {"open_always": True}})
    assert replaced.status == 200 and replaced.body["hours"]["open_always"] is True
    assert replaced.body["hours"]["holidays"] is None  # the hours are replaced, not merged

    # What the SLA and routing engines read.
    hours = await office.daemon.store.calendar_hours(office.workspace_id, calendar["id"])
    assert hours == BusinessHours(open_always=True)
    assert await office.daemon.store.calendar_hours(office.workspace_id, "nope") is None
    assert await office.daemon.store.calendar_hours(office.workspace_id, None) is None

    assert (await office.admin.delete(f"/calendars/{calendar['id']}")).status == 204
    error_of(await office.agent.get(f"/calendars/{calendar['id']}"), 404, "not_found")
    assert (await office.agent.get("/calendars")).body == {"items": []}


async def test_calendar_hours_apply_the_countrys_holidays(office: Office) -> None:
    calendar = await created(office.admin)
    hours = await office.daemon.store.calendar_hours(office.workspace_id, calendar["id"])
    assert hours is not None
    whit_monday = datetime(2026, 5, 25, 8, tzinfo=UTC)  # 10:00 in Budapest, a public holiday
    assert not hours.is_open(whit_monday)
    assert hours.is_open(datetime(2026, 5, 26, 8, tzinfo=UTC))
    assert not hours.is_open(datetime(2026, 12, 24, 8, tzinfo=UTC))  # listed in `closed`
    friday_evening = datetime(2026, 5, 22, 15, tzinfo=UTC)  # 17:00 in Budapest
    assert hours.add_open_seconds(friday_evening, 8 * 3600) == datetime(2026, 5, 26, 14, tzinfo=UTC)


async def test_writes_need_an_admin(office: Office) -> None:
    calendar = await created(office.admin)
    for client in (office.agent, office.seller):
        error_of(await client.post("/calendars", {"name": "x", "hours": {}}), 403, "forbidden")
        error_of(await client.patch(f"/calendars/{calendar['id']}", {"name": "y"}), 403, "forbidden")
        error_of(await client.delete(f"/calendars/{calendar['id']}"), 403, "forbidden")
    error_of(await office.seller.get("/calendars"), 403, "forbidden")


INVALID = "invalid_field"


@pytest.mark.parametrize(
    ("body", "code", "field", "words"),
    [
        (
            {"name": "x", "hours": {"holidays": {"country": "XX"}}},
            INVALID,
            "hours.holidays.country",
            "'XX' is not a country",
        ),
        (
            {"name": "x", "hours": {"holidays": {"country": "DE", "subdivision": "ZZ"}}},
            INVALID,
            "hours.holidays.subdivision",
            "'ZZ' is not a subdivision of DE",
        ),
        (
            {"name": "x", "hours": {"timezone": "Mars/Olympus"}},
            INVALID,
            "hours.timezone",
            "not an IANA time zone",
        ),
        ({"name": "x", "hours": {"weekly": {"mon": ["9:00-17:00"]}}}, INVALID, "hours.weekly", "two digits"),
        ({"name": "x", "hours": {"closed": ["tomorrow"]}}, INVALID, "hours.closed.0", ""),
        ({"name": "", "hours": {}}, INVALID, "name", ""),
        ({"name": "x"}, "missing_field", "hours", "required"),
        ({"name": "x", "hours": {}, "colour": "red"}, "unknown_field", "colour", "unknown"),
    ],
)
async def test_invalid_bodies_name_the_field(
    office: Office, body: dict[str, Any], code: str, field: str, words: str
) -> None:
    error = error_of(await office.admin.post("/calendars", body), 400, code)
    assert error["field"] == field, error
    assert words in error["message"], error
    assert (await office.admin.get("/calendars")).body == {"items": []}


async def test_patch_refuses_null_and_invalid_hours(office: Office) -> None:
    calendar = await created(office.admin)
    path = f"/calendars/{calendar['id']}"
    error_of(await office.admin.patch(path, {"hours": None}), 400, "invalid_field")
    error = error_of(
        await office.admin.patch(path, {"hours": {"holidays": {"country": "QQ"}}}), 400, "invalid_field"
    )
    assert "'QQ'" in error["message"]
    assert (await office.admin.get(path)).body == calendar


async def test_names_are_unique_per_workspace(office: Office) -> None:
    first = await created(office.admin, "Main")
    error = error_of(await office.admin.post("/calendars", {"name": "Main", "hours": {}}), 409, "conflict")
    assert "'Main'" in error["message"]
    second = await created(office.admin, "Night shift", {"weekly": {"mon": ["22:00-06:00"]}})
    error_of(await office.admin.patch(f"/calendars/{second['id']}", {"name": "Main"}), 409, "conflict")
    # Another workspace may use the same name.
    await created(office.other_admin, "Main")
    assert (await office.admin.get(f"/calendars/{first['id']}")).body["name"] == "Main"


async def test_another_workspace_cannot_see_or_change_a_calendar(office: Office) -> None:
    calendar = await created(office.admin)
    path = f"/calendars/{calendar['id']}"
    assert (await office.other_admin.get("/calendars")).body == {"items": []}
    error_of(await office.other_admin.get(path), 404, "not_found")
    error_of(await office.other_admin.patch(path, {"name": "mine"}), 404, "not_found")
    error_of(await office.other_admin.delete(path), 404, "not_found")
    assert await office.daemon.store.calendar_hours(office.other_workspace_id, calendar["id"]) is None
    assert (await office.admin.get(path)).body == calendar


async def test_a_calendar_in_use_cannot_be_deleted(office: Office) -> None:
    calendar = await created(office.admin)
    path = f"/calendars/{calendar['id']}"
    team = await office.admin.post("/teams", {"name": "Budapest", "calendar_id": calendar["id"]})
    assert team.status == 201, team.body
    error = error_of(await office.admin.delete(path), 409, "calendar_in_use")
    assert "team 'Budapest'" in error["message"] and "first" in error["message"]

    # An SLA policy's calendar counts too (its endpoints are elsewhere: the row is written directly).
    async with office.daemon.store.write() as conn:
        now = utcnow()
        await conn.execute(
            insert(t.sla_policies).values(
                id=new_id(),
                workspace_id=office.workspace_id,
                name="Company hours",
                conditions={},
                first_response_seconds=8 * 3600,
                calendar_id=calendar["id"],
                created_at=now,
                updated_at=now,
            )
        )
    unlinked = await office.admin.patch(f"/teams/{team.body['id']}", {"calendar_id": ""})
    assert unlinked.status == 200 and unlinked.body["calendar_id"] is None
    error = error_of(await office.admin.delete(path), 409, "calendar_in_use")
    assert "SLA policy 'Company hours'" in error["message"] and "team" not in error["message"]
    async with office.daemon.store.write() as conn:
        await conn.execute(t.sla_policies.delete())

    # A rule's business-hours condition, and the out-of-hours reply, name calendars as well.
    rule = await office.admin.post(
        "/rules",
        {
            "name": "Night shift",
            "event": "conversation.created",
            "conditions": [{"type": "business_hours", "when": "inside", "calendar_id": calendar["id"]}],
            "actions": [{"type": "add_label", "label": "night"}],
        },
    )
    assert rule.status == 201, rule.body
    error = error_of(await office.admin.delete(path), 409, "calendar_in_use")
    assert "rule 'Night shift'" in error["message"]
    assert (await office.admin.delete(f"/rules/{rule.body['id']}")).status == 204
    settings = await office.daemon.store.workspace_settings(office.workspace_id)
    away = {"enabled": False, "calendar_id": calendar["id"]}
    await office.daemon.store.update_workspace(
        office.workspace_id, settings={**settings, "auto_replies": {"out_of_hours": away}}
    )
    error = error_of(await office.admin.delete(path), 409, "calendar_in_use")
    assert "the out-of-hours reply" in error["message"]
    await office.daemon.store.update_workspace(office.workspace_id, settings=settings)
    assert (await office.admin.delete(path)).status == 204


async def test_teams_take_routing_settings_that_are_checked(office: Office) -> None:
    store = office.daemon.store
    calendar = await created(office.admin)
    channel_id = await add_channel(store, office.workspace_id, {"secret": SECRET})
    other_channel = await add_channel(store, office.other_workspace_id, {"secret": SECRET})
    other_calendar = await created(office.other_admin, "Theirs")
    other_user, _ = await user_with_token(store, office.other_workspace_id, Role.AGENT)

    reply = await office.admin.post(
        "/teams",
        {
            "name": "Budapest",
            "languages": ["hu"],
            "member_ids": [office.agent_id],
            "channel_account_ids": [channel_id, channel_id],
            "calendar_id": calendar["id"],
            "lead_id": office.agent_id,
            "position": 2,
        },
    )
    assert reply.status == 201, reply.body
    team = reply.body
    assert team["channel_account_ids"] == [channel_id]
    assert (team["calendar_id"], team["lead_id"], team["position"]) == (calendar["id"], office.agent_id, 2)
    assert (await office.admin.get(f"/teams/{team['id']}")).body == team
    plain = await office.admin.post("/teams", {"name": "Plain"})
    assert plain.status == 201
    assert (plain.body["channel_account_ids"], plain.body["calendar_id"], plain.body["lead_id"]) == (
        [],
        None,
        None,
    )
    assert plain.body["position"] == 0

    bad = [
        ({"channel_account_ids": [other_channel]}, "channel_account_ids", repr(other_channel)),
        ({"calendar_id": other_calendar["id"]}, "calendar_id", repr(other_calendar["id"])),
        ({"lead_id": other_user}, "lead_id", repr(other_user)),
        ({"position": "first"}, "position", ""),
    ]
    for change, field, words in bad:
        for reply in (
            await office.admin.post("/teams", {"name": f"t {new_id()}", **change}),
            await office.admin.patch(f"/teams/{team['id']}", change),
        ):
            error = error_of(reply, 400, "invalid_field")
            assert error["field"] == field and words in error["message"], error
    assert (await office.admin.get(f"/teams/{team['id']}")).body == team

    changed = await office.admin.patch(
        f"/teams/{team['id']}", {"channel_account_ids": [], "lead_id": "", "calendar_id": "", "position": -1}
    )
    assert changed.status == 200, changed.body
    assert (changed.body["channel_account_ids"], changed.body["lead_id"], changed.body["calendar_id"]) == (
        [],
        None,
        None,
    )
    assert changed.body["position"] == -1
    error_of(await office.admin.patch(f"/teams/{team['id']}", {"lead_id": None}), 400, "invalid_field")

    # A deactivated user cannot lead a team.
    assert (await office.admin.delete(f"/users/{office.agent_id}")).status == 204
    error = error_of(
        await office.admin.patch(f"/teams/{team['id']}", {"lead_id": office.agent_id}), 400, "invalid_field"
    )
    assert error["field"] == "lead_id"


async def test_stored_holidays_the_package_no_longer_knows_are_left_out(office: Office) -> None:
    calendar = await created(office.admin)
    stale = {**BUDAPEST_HOURS, "holidays": {"country": "XX", "subdivision": None}}
    async with office.daemon.store.write() as conn:
        await conn.execute(t.calendars.update().where(t.calendars.c.id == calendar["id"]).values(hours=stale))
    reply = await office.agent.get(f"/calendars/{calendar['id']}")
    assert reply.status == 200, reply.body
    assert reply.body["hours"]["holidays"] is None
    assert reply.body["hours"]["closed"] == ["2026-12-24"]
