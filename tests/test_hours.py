"""The business-hours calendar (aggregator/hours.py)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from aggregator.hours import BusinessHours, describe_next_open

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WHOLE_WEEK = {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def test_default_hours_are_monday_to_friday_nine_to_five_utc() -> None:
    hours = BusinessHours()
    assert hours.timezone == "UTC"
    assert hours.weekly == {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}
    assert not hours.open_always and hours.closed == []
    monday = datetime(2026, 4, 13, tzinfo=UTC)  # a Monday
    assert not hours.is_open(monday.replace(hour=8, minute=59))
    assert hours.is_open(monday.replace(hour=9))
    assert hours.is_open(monday.replace(hour=16, minute=59, second=59))
    assert not hours.is_open(monday.replace(hour=17))  # [start, end)
    assert not hours.is_open(datetime(2026, 4, 18, 12, tzinfo=UTC))  # Saturday


def test_friday_evening_opens_on_monday_morning_in_the_calendars_zone() -> None:
    hours = BusinessHours(timezone="Europe/Berlin")
    friday = berlin(2026, 4, 10, 17, 30)
    opens = hours.next_open(friday.astimezone(UTC))  # any zone in, the calendar's zone out
    assert opens == berlin(2026, 4, 13, 9, 0)
    assert opens is not None and opens.tzinfo == BERLIN and opens.hour == 9
    assert hours.next_close(friday) is None  # closed now


def test_open_now_returns_at_and_the_close() -> None:
    hours = BusinessHours(timezone="Europe/Berlin")
    at = berlin(2026, 4, 14, 11, 15)
    assert hours.next_open(at) == at
    assert hours.next_close(at) == berlin(2026, 4, 14, 17, 0)
    assert hours.next_close(berlin(2026, 4, 14, 9, 0)) == berlin(2026, 4, 14, 17, 0)
    assert hours.next_open(berlin(2026, 4, 14, 17, 0)) == berlin(2026, 4, 15, 9, 0)


def test_lunch_break_is_closed() -> None:
    hours = BusinessHours(timezone="Europe/Berlin", weekly={"mon": ["09:00-12:30", "13:30-18:00"]})
    lunch = berlin(2026, 4, 13, 12, 45)
    assert not hours.is_open(lunch)
    assert hours.next_open(lunch) == berlin(2026, 4, 13, 13, 30)
    assert hours.next_close(berlin(2026, 4, 13, 10, 0)) == berlin(2026, 4, 13, 12, 30)
    assert hours.open_seconds_between(berlin(2026, 4, 13), berlin(2026, 4, 14)) == 8 * 3600


def test_intervals_may_be_given_in_any_order() -> None:
    hours = BusinessHours(weekly={"mon": ["13:30-18:00", "09:00-12:30"]})
    assert hours.next_open(datetime(2026, 4, 13, 7, tzinfo=UTC)) == datetime(2026, 4, 13, 9, tzinfo=UTC)


def test_holiday_skips_to_the_next_day() -> None:
    hours = BusinessHours(timezone="Europe/Berlin", closed=[date(2026, 4, 13), date(2026, 4, 14)])
    assert not hours.is_open(berlin(2026, 4, 13, 10, 0))
    assert hours.next_open(berlin(2026, 4, 10, 18, 0)) == berlin(2026, 4, 15, 9, 0)
    assert hours.next_open(berlin(2026, 4, 13, 10, 0)) == berlin(2026, 4, 15, 9, 0)


def test_holidays_parse_from_iso_strings() -> None:
    hours = BusinessHours.model_validate({"closed": ["2026-12-25"]})
    assert hours.closed == [date(2026, 12, 25)]
    assert not hours.is_open(datetime(2026, 12, 25, 10, tzinfo=UTC))


def test_interval_crossing_midnight() -> None:
    hours = BusinessHours(timezone="Europe/Berlin", weekly={"fri": ["22:00-02:00"]})
    saturday_night = berlin(2026, 4, 18, 1, 0)
    assert hours.is_open(saturday_night)
    assert hours.is_open(berlin(2026, 4, 17, 22, 0))
    assert not hours.is_open(berlin(2026, 4, 18, 2, 0))
    assert not hours.is_open(berlin(2026, 4, 17, 1, 0))  # Friday's early morning belongs to Thursday
    assert hours.next_close(saturday_night) == berlin(2026, 4, 18, 2, 0)
    assert hours.next_open(berlin(2026, 4, 18, 2, 0)) == berlin(2026, 4, 24, 22, 0)
    assert hours.open_seconds_between(berlin(2026, 4, 13), berlin(2026, 4, 20)) == 4 * 3600


def test_a_holiday_closes_its_whole_date_and_its_night_interval() -> None:
    night = {"thu": ["22:00-02:00"], "fri": ["22:00-02:00"]}
    saturday_off = BusinessHours(timezone="Europe/Berlin", weekly=night, closed=[date(2026, 4, 18)])
    assert saturday_off.is_open(berlin(2026, 4, 17, 23, 0))
    assert not saturday_off.is_open(berlin(2026, 4, 18, 1, 0))
    assert saturday_off.next_close(berlin(2026, 4, 17, 23, 0)) == berlin(2026, 4, 18, 0, 0)
    friday_off = BusinessHours(timezone="Europe/Berlin", weekly=night, closed=[date(2026, 4, 17)])
    assert not friday_off.is_open(berlin(2026, 4, 17, 1, 0))  # Thursday's night ends at the holiday
    assert not friday_off.is_open(berlin(2026, 4, 18, 1, 0))  # no interval starts on the holiday
    assert friday_off.next_open(berlin(2026, 4, 16, 12, 0)) == berlin(2026, 4, 16, 22, 0)
    assert friday_off.next_close(berlin(2026, 4, 16, 23, 0)) == berlin(2026, 4, 17, 0, 0)


def test_whole_days_on_consecutive_days_merge_for_next_close() -> None:
    hours = BusinessHours(
        timezone="Europe/Berlin",
        weekly={
            "fri": ["18:00-24:00"],
            "sat": ["00:00-24:00"],
            "sun": ["00:00-24:00"],
            "mon": ["00:00-08:00"],
        },
    )
    assert hours.next_close(berlin(2026, 4, 17, 19, 0)) == berlin(2026, 4, 20, 8, 0)
    assert hours.next_close(berlin(2026, 4, 19, 23, 59)) == berlin(2026, 4, 20, 8, 0)
    assert hours.is_open(berlin(2026, 4, 18, 0, 0))


def test_next_close_joins_intervals_across_midnight_and_touching_ones() -> None:
    hours = BusinessHours(weekly={"fri": ["22:00-02:00"], "sat": ["02:00-04:00", "04:00-05:00"]})
    assert hours.next_close(datetime(2026, 4, 17, 23, tzinfo=UTC)) == datetime(2026, 4, 18, 5, tzinfo=UTC)
    overlapping = BusinessHours(
        weekly={"fri": ["22:00-03:00"], "sat": ["01:00-04:00"]}
    )  # merged, not an error
    assert overlapping.next_close(datetime(2026, 4, 17, 23, tzinfo=UTC)) == datetime(
        2026, 4, 18, 4, tzinfo=UTC
    )
    assert (
        overlapping.open_seconds_between(datetime(2026, 4, 17, tzinfo=UTC), datetime(2026, 4, 19, tzinfo=UTC))
        == 6 * 3600
    )


def test_never_closing_weekly_hours_have_no_next_close() -> None:
    hours = BusinessHours(weekly=WHOLE_WEEK)
    at = datetime(2026, 4, 17, 23, tzinfo=UTC)
    assert hours.is_open(at) and hours.next_open(at) == at
    assert hours.next_close(at) is None  # open beyond the 400-day horizon
    closing = BusinessHours(weekly=WHOLE_WEEK, closed=[date(2026, 6, 1)])
    assert closing.next_close(at) == datetime(2026, 6, 1, tzinfo=UTC)


def test_open_always() -> None:
    hours = BusinessHours(timezone="Europe/Berlin", open_always=True, weekly={}, closed=[date(2026, 12, 25)])
    at = datetime(2026, 12, 25, 3, tzinfo=UTC)
    assert hours.is_open(at)
    assert hours.next_open(at) == at
    assert hours.next_close(at) is None
    assert hours.open_seconds_between(at, at + timedelta(days=7)) == 7 * 24 * 3600


@pytest.mark.parametrize("weekly", [{}, {"mon": [], "sat": []}])
def test_no_hours_never_open(weekly: dict[str, list[str]]) -> None:
    hours = BusinessHours.model_validate({"weekly": weekly})
    at = datetime(2026, 4, 13, 10, tzinfo=UTC)
    assert not hours.is_open(at)
    assert hours.next_open(at) is None
    assert hours.next_close(at) is None
    assert hours.open_seconds_between(at, at + timedelta(days=30)) == 0
    assert describe_next_open(hours, at, "en") == ""


def test_next_open_searches_400_days_at_most() -> None:
    every_monday_closed = [date(2026, 4, 13) + timedelta(weeks=n) for n in range(60)]
    hours = BusinessHours(weekly={"mon": ["09:00-10:00"]}, closed=every_monday_closed)
    assert hours.next_open(datetime(2026, 4, 12, tzinfo=UTC)) is None  # 60 weeks > 400 days
    hours = BusinessHours(weekly={"mon": ["09:00-10:00"]}, closed=every_monday_closed[:50])
    assert hours.next_open(datetime(2026, 4, 12, tzinfo=UTC)) == datetime(2027, 3, 29, 9, tzinfo=UTC)


@pytest.mark.parametrize("method", ["is_open", "next_open", "next_close"])
def test_naive_datetime_is_rejected(method: str) -> None:
    with pytest.raises(ValueError, match="at must be a timezone-aware datetime"):
        getattr(BusinessHours(), method)(datetime(2026, 4, 13, 10))


def test_naive_datetime_is_rejected_by_open_seconds_between() -> None:
    with pytest.raises(ValueError, match="end must be a timezone-aware datetime"):
        BusinessHours().open_seconds_between(datetime(2026, 4, 13, tzinfo=UTC), datetime(2026, 4, 14))
    with pytest.raises(ValueError, match="at must be a timezone-aware"):
        describe_next_open(BusinessHours(), datetime(2026, 4, 13), "en")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"timezone": "Mars/Olympus"},
            "timezone: 'Mars/Olympus' is not an IANA time zone (e.g. Europe/Berlin)",
        ),
        ({"timezone": ""}, "timezone: '' is not an IANA time zone (e.g. Europe/Berlin)"),
        (
            {"weekly": {"mon": ["09:00-17:00", "25:00-26:00"]}},
            "weekly.mon[1]: '25:00-26:00' is not HH:MM-HH:MM (e.g. 09:00-17:30)",
        ),
        ({"weekly": {"tue": ["09:00-17:60"]}}, "weekly.tue[0]: '09:00-17:60' is not HH:MM-HH:MM"),
        ({"weekly": {"tue": ["09:00"]}}, "weekly.tue[0]: '09:00' is not HH:MM-HH:MM"),
        ({"weekly": {"tue": ["09:00-24:30"]}}, "weekly.tue[0]: '09:00-24:30' is not HH:MM-HH:MM"),
        ({"weekly": {"tue": ["09:00 - 17:00"]}}, "weekly.tue[0]: '09:00 - 17:00' is not HH:MM-HH:MM"),
        ({"weekly": {"tue": ["\u0660\u0669:00-17:00"]}}, "is not HH:MM-HH:MM (e.g. 09:00-17:30)"),
        (
            {"weekly": {"wed": ["9:00-17:00"]}},
            "weekly.wed[0]: '9:00-17:00' is not HH:MM-HH:MM: write hours and minutes with two digits",
        ),
        ({"weekly": {"wed": ["24:00-02:00"]}}, "starts at 24:00; start the next day at 00:00 instead"),
        (
            {"weekly": {"mon": ["09:00-12:30", "12:00-18:00"]}},
            "weekly.mon[0] '09:00-12:30' overlaps weekly.mon[1] '12:00-18:00': let one end before the other "
            "starts, or join them into one interval (09:00-18:00)",
        ),
        (
            {"weekly": {"fri": ["23:00-23:30", "22:00-02:00"]}},
            "weekly.fri[1] '22:00-02:00' overlaps weekly.fri[0] '23:00-23:30'",
        ),
        (
            {"weekly": {"thu": ["10:00-10:00"]}},
            "weekly.thu[0]: '10:00-10:00' starts and ends at the same time; for the whole day write 00:00-24:00",
        ),
        ({"weekly": {"thu": ["00:00-00:00"]}}, "starts and ends at the same time"),
        (
            {"weekly": {"monday": ["09:00-17:00"]}},
            "weekly: 'monday' is not a weekday (did you mean 'mon'?); use mon, tue, wed, thu, fri, sat or sun",
        ),
        ({"weekly": {"xyz": []}}, "weekly: 'xyz' is not a weekday; use mon, tue"),
        ({"opening": "09:00"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_input_names_the_problem_and_the_fix(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BusinessHours.model_validate(fields)
    assert message in str(caught.value)


def test_valid_edge_intervals() -> None:
    hours = BusinessHours(weekly={"mon": ["00:00-24:00"], "tue": ["18:00-24:00"]})
    assert hours.is_open(datetime(2026, 4, 13, 0, 0, tzinfo=UTC))
    assert hours.is_open(datetime(2026, 4, 13, 23, 59, 59, tzinfo=UTC))
    ending_at_midnight = BusinessHours(weekly={"tue": ["22:00-00:00"]})  # crosses to 00:00 = 24:00
    assert ending_at_midnight.next_close(datetime(2026, 4, 14, 23, tzinfo=UTC)) == datetime(
        2026, 4, 15, tzinfo=UTC
    )


def test_model_is_frozen_and_serialisable() -> None:
    hours = BusinessHours(timezone="Europe/Berlin", closed=[date(2026, 12, 25)])
    with pytest.raises(ValidationError):
        hours.timezone = "UTC"  # type: ignore[misc]
    again = BusinessHours.model_validate_json(hours.model_dump_json())
    assert again == hours


# Daylight saving time: Europe/Berlin jumps 02:00 -> 03:00 on 2026-03-29 and 03:00 -> 02:00 on 2026-10-25;
# America/New_York 02:00 -> 03:00 on 2026-03-08 and 02:00 -> 01:00 on 2026-11-01.


@pytest.mark.parametrize(
    ("zone", "sunday"), [("Europe/Berlin", date(2026, 3, 29)), ("America/New_York", date(2026, 3, 8))]
)
def test_spring_forward_opening_in_the_gap_opens_at_the_first_existing_instant(
    zone: str, sunday: date
) -> None:
    tz = ZoneInfo(zone)
    hours = BusinessHours(timezone=zone, weekly={"sun": ["02:30-05:00"]})
    saturday = datetime.combine(sunday - timedelta(days=1), time(12), tzinfo=tz)
    opens = hours.next_open(saturday)
    assert opens == datetime(sunday.year, sunday.month, sunday.day, 3, 0, tzinfo=tz)
    assert opens is not None and opens.utcoffset() == datetime(2026, 7, 1, tzinfo=tz).utcoffset()  # summer
    # (arithmetic on aware datetimes of one zone is wall-clock arithmetic: step back in UTC)
    assert not hours.is_open(opens.astimezone(UTC) - timedelta(seconds=1))
    assert hours.next_close(opens) == datetime(sunday.year, sunday.month, sunday.day, 5, 0, tzinfo=tz)
    assert hours.open_seconds_between(saturday, saturday + timedelta(days=2)) == 2 * 3600
    swallowed = BusinessHours(timezone=zone, weekly={"sun": ["02:00-02:45", "04:00-05:00"]})
    assert swallowed.next_open(saturday) == datetime(sunday.year, sunday.month, sunday.day, 4, 0, tzinfo=tz)


@pytest.mark.parametrize(
    ("zone", "sunday", "ambiguous_hour"),
    [("Europe/Berlin", date(2026, 10, 25), 2), ("America/New_York", date(2026, 11, 1), 1)],
)
def test_fall_back_uses_the_first_occurrence(zone: str, sunday: date, ambiguous_hour: int) -> None:
    tz = ZoneInfo(zone)
    start = f"{ambiguous_hour:02d}:30"
    hours = BusinessHours(timezone=zone, weekly={"sun": [f"{start}-{ambiguous_hour + 2:02d}:00"]})
    saturday = datetime.combine(sunday - timedelta(days=1), time(12), tzinfo=tz)
    opens = hours.next_open(saturday)
    first = datetime(sunday.year, sunday.month, sunday.day, ambiguous_hour, 30, fold=0, tzinfo=tz)
    second = first.replace(fold=1)
    assert first.astimezone(UTC) + timedelta(hours=1) == second.astimezone(UTC)  # really ambiguous
    assert opens is not None and opens.astimezone(UTC) == first.astimezone(UTC)
    assert opens.fold == 0
    assert hours.is_open(second)
    # 30 minutes of summer time, the repeated hour, then 1 h of winter time: 2.5 h of real time
    assert hours.open_seconds_between(saturday, saturday + timedelta(days=2)) == 2.5 * 3600
    ends_in_repeat = BusinessHours(timezone=zone, weekly={"sun": [f"00:00-{start}"]})
    assert ends_in_repeat.next_close(datetime(sunday.year, sunday.month, sunday.day, tzinfo=tz)) == first
    assert not ends_in_repeat.is_open(second)


def test_open_seconds_over_a_week_of_default_hours() -> None:
    hours = BusinessHours()
    monday = datetime(2026, 4, 13, tzinfo=UTC)
    assert hours.open_seconds_between(monday, monday + timedelta(days=7)) == 5 * 8 * 3600
    assert hours.open_seconds_between(monday + timedelta(days=1), monday + timedelta(days=8)) == 5 * 8 * 3600
    assert hours.open_seconds_between(monday, monday + timedelta(weeks=8)) == 8 * 5 * 8 * 3600
    assert hours.open_seconds_between(
        monday.replace(hour=16), monday.replace(hour=10) + timedelta(days=1)
    ) == (2 * 3600)
    assert hours.open_seconds_between(monday.replace(hour=12), monday.replace(hour=11)) == 0
    assert hours.open_seconds_between(monday.replace(hour=12), monday.replace(hour=12)) == 0


def test_open_seconds_across_a_dst_change() -> None:
    berlin_hours = BusinessHours(timezone="Europe/Berlin")
    monday = berlin(2026, 3, 23)  # the week whose Sunday springs forward
    assert berlin_hours.open_seconds_between(monday, berlin(2026, 3, 30)) == 5 * 8 * 3600
    assert berlin_hours.open_seconds_between(monday, berlin(2026, 4, 6)) == 10 * 8 * 3600
    around_the_clock = BusinessHours(timezone="Europe/Berlin", weekly=WHOLE_WEEK)
    assert around_the_clock.open_seconds_between(monday, berlin(2026, 3, 30)) == (7 * 24 - 1) * 3600
    assert (
        around_the_clock.open_seconds_between(berlin(2026, 10, 19), berlin(2026, 10, 26))
        == (7 * 24 + 1) * 3600
    )
    new_york = BusinessHours(timezone="America/New_York", weekly=WHOLE_WEEK)
    fall = datetime(2026, 10, 31, tzinfo=NEW_YORK)
    assert new_york.open_seconds_between(fall, datetime(2026, 11, 2, tzinfo=NEW_YORK)) == 49 * 3600
    always = BusinessHours(timezone="America/New_York", open_always=True)
    assert always.open_seconds_between(fall, datetime(2026, 11, 2, tzinfo=NEW_YORK)) == 49 * 3600


@pytest.mark.parametrize(
    ("language", "text"),
    [("en", "Monday 09:00"), ("de", "Montag 09:00"), ("fr", "lundi 09:00"), ("de-AT", "Montag 09:00")],
)
def test_describe_next_open(language: str, text: str) -> None:
    hours = BusinessHours(timezone="Europe/Berlin")
    assert describe_next_open(hours, datetime(2026, 4, 10, 16, tzinfo=UTC), language) == text


@pytest.mark.parametrize("language", ["xx", "", "123", "zz-ZZ"])
def test_describe_next_open_falls_back_to_english(language: str) -> None:
    hours = BusinessHours(timezone="Europe/Berlin")
    assert describe_next_open(hours, berlin(2026, 4, 10, 18), language) == "Monday 09:00"


def test_describe_next_open_far_ahead_gives_the_date() -> None:
    hours = BusinessHours(timezone="Europe/Berlin", closed=[date(2026, 4, 13), date(2026, 4, 14)])
    at = berlin(2026, 4, 10, 18)
    assert describe_next_open(hours, at, "en") == "Wednesday 09:00"  # 5 days ahead
    closed_week = [date(2026, 4, 13) + timedelta(days=n) for n in range(5)]
    hours = BusinessHours(timezone="Europe/Berlin", closed=closed_week)
    assert describe_next_open(hours, at, "en") == "Apr 20, 2026 09:00"
    assert describe_next_open(hours, at, "de") == "20.04.2026 09:00"
    assert describe_next_open(hours, at, "fr") == "20 avr. 2026 09:00"


CALENDARS = [
    BusinessHours(),
    BusinessHours(
        timezone="Europe/Berlin", weekly={"mon": ["09:00-12:30", "13:30-18:00"], "sun": ["02:30-03:30"]}
    ),
    BusinessHours(
        timezone="America/New_York",
        weekly={
            "fri": ["22:00-02:00"],
            "sat": ["02:00-04:00"],
            "sun": ["01:30-02:30"],
            "wed": ["00:00-24:00"],
        },
        closed=[date(2026, 3, 11), date(2026, 11, 4), date(2026, 7, 4)],
    ),
]


def test_next_open_is_open_and_nothing_before_it_is() -> None:
    rng = random.Random(20260413)
    year = (datetime(2026, 1, 1, tzinfo=UTC).timestamp(), datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    dst_changes = [datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 3, 29, 1, tzinfo=UTC)]
    dst_changes += [datetime(2026, 10, 25, 1, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC)]
    for n in range(500):
        hours = CALENDARS[n % len(CALENDARS)]
        if n % 5 == 0:  # a fifth within two days of a DST change
            change = dst_changes[n // 5 % len(dst_changes)]
            at = change + timedelta(seconds=rng.uniform(-2, 2) * 86400)
        else:
            at = datetime.fromtimestamp(rng.uniform(*year), UTC)
        opens = hours.next_open(at)
        assert opens is not None and opens >= at, (hours, at)
        opens = opens.astimezone(UTC)  # for arithmetic in real time
        assert hours.is_open(opens), (hours, at, opens)
        if opens > at:
            assert not hours.is_open(at)
            assert not hours.is_open(opens - timedelta(microseconds=1)), (hours, at, opens)
            assert hours.open_seconds_between(at, opens) == 0, (hours, at, opens)
            assert hours.open_seconds_between(at, opens + timedelta(minutes=1)) == 60, (hours, at, opens)
            assert hours.next_close(at) is None
        closes = hours.next_close(opens)
        assert closes is not None and closes > opens, (hours, at, opens)
        closes = closes.astimezone(UTC)
        assert hours.is_open(closes - timedelta(microseconds=1)) and not hours.is_open(closes)
        assert hours.open_seconds_between(opens, closes) == (closes - opens).total_seconds()
        if n < 24:  # every minute up to the opening, on a few samples
            minute = at
            while minute < opens:
                assert not hours.is_open(minute), (hours, at, minute)
                minute += timedelta(minutes=1)


# Public holidays (the holidays package) and business seconds added to an instant (SLA due times)

BUDAPEST = ZoneInfo("Europe/Budapest")
EIGHT_TO_FOUR = {day: ["08:00-16:00"] for day in ("mon", "tue", "wed", "thu", "fri")}


def budapest(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BUDAPEST)


def test_a_countrys_public_holidays_are_closed_days() -> None:
    hours = BusinessHours(timezone="Europe/Budapest", weekly=EIGHT_TO_FOUR, holidays={"country": "hu"})
    assert hours.holidays is not None and hours.holidays.country == "HU"  # normalised
    assert not hours.is_open(budapest(2026, 5, 25, 10))  # Whit Monday in Hungary
    assert hours.is_open(budapest(2026, 5, 26, 10))
    # Lazily per year: a holiday of another year is closed too.
    assert not hours.is_open(budapest(2027, 3, 15, 10))  # National Day, a Monday in 2027
    assert hours.next_open(budapest(2026, 5, 22, 17)) == budapest(2026, 5, 26, 8)
    same_hours_without = BusinessHours(timezone="Europe/Budapest", weekly=EIGHT_TO_FOUR)
    assert same_hours_without.is_open(budapest(2026, 5, 25, 10))


def test_holidays_of_a_subdivision() -> None:
    bavaria = BusinessHours(timezone="Europe/Berlin", holidays={"country": "DE", "subdivision": "BY"})
    berlin_state = BusinessHours(timezone="Europe/Berlin", holidays={"country": "DE", "subdivision": "BE"})
    epiphany = berlin(2026, 1, 6, 10)  # a Tuesday: a holiday in Bavaria, not in Berlin
    assert not bavaria.is_open(epiphany)
    assert berlin_state.is_open(epiphany)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"country": "XX"}, r"holidays.country\n.*'XX' is not a country the holidays package knows"),
        ({"country": "DE", "subdivision": "ZZ"}, r"holidays.subdivision\n.*'ZZ' is not a subdivision of DE"),
        ({"country": "HU", "region": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_unknown_holiday_country_or_subdivision_is_refused_by_name(
    source: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        BusinessHours(holidays=source)


def test_holidays_survive_a_json_round_trip_and_keep_the_compile_cache() -> None:
    hours = BusinessHours(timezone="Europe/Budapest", holidays={"country": "HU"}, closed=[date(2026, 5, 27)])
    again = BusinessHours.model_validate_json(hours.model_dump_json())
    assert again == hours
    assert again._calendar() is hours._calendar()  # hashable arguments: one compiled calendar
    assert not again.is_open(budapest(2026, 5, 25, 10)) and not again.is_open(budapest(2026, 5, 27, 10))


def test_add_open_seconds_counts_only_open_time() -> None:
    hours = BusinessHours(timezone="Europe/Berlin")  # mon-fri 09:00-17:00
    monday = berlin(2026, 4, 13, 10)
    assert hours.add_open_seconds(monday, 3600) == berlin(2026, 4, 13, 11).astimezone(UTC)
    assert hours.add_open_seconds(monday, 7 * 3600) == berlin(2026, 4, 13, 17).astimezone(UTC)
    assert hours.add_open_seconds(monday, 7 * 3600 + 1) == berlin(2026, 4, 14, 9, 0).astimezone(
        UTC
    ) + timedelta(seconds=1)
    saturday = berlin(2026, 4, 18, 12)
    assert hours.add_open_seconds(saturday, 0) == berlin(2026, 4, 20, 9).astimezone(UTC)
    assert hours.add_open_seconds(monday, 0) == monday.astimezone(UTC)
    due = hours.add_open_seconds(monday, 40 * 3600)  # five working days
    assert due is not None and hours.open_seconds_between(monday, due) == 40 * 3600


def test_sla_due_time_over_a_weekend_and_a_monday_holiday() -> None:
    """The issue's case: Mon-Fri 08:00-16:00, a Monday holiday, a Friday 17:00 message, 8 business hours."""
    friday_evening = budapest(2026, 5, 22, 17)
    tuesday_four = budapest(2026, 5, 26, 16).astimezone(UTC)
    from_package = BusinessHours(timezone="Europe/Budapest", weekly=EIGHT_TO_FOUR, holidays={"country": "HU"})
    assert from_package.add_open_seconds(friday_evening, 8 * 3600) == tuesday_four
    listed = BusinessHours(timezone="Europe/Budapest", weekly=EIGHT_TO_FOUR, closed=[date(2026, 5, 25)])
    assert listed.add_open_seconds(friday_evening, 8 * 3600) == tuesday_four
    without = BusinessHours(timezone="Europe/Budapest", weekly=EIGHT_TO_FOUR)
    assert without.add_open_seconds(friday_evening, 8 * 3600) == budapest(2026, 5, 25, 16).astimezone(UTC)
    # Marketplace mode: around the clock.
    always = BusinessHours(open_always=True, holidays={"country": "HU"})
    assert always.add_open_seconds(friday_evening, 24 * 3600) == budapest(2026, 5, 23, 17).astimezone(UTC)


def test_add_open_seconds_without_any_hours_is_none() -> None:
    assert BusinessHours(weekly={}).add_open_seconds(datetime(2026, 4, 13, tzinfo=UTC), 60) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        BusinessHours().add_open_seconds(datetime(2026, 4, 13), 60)
