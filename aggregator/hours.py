"""A workspace's business-hours calendar: when the team is open, when it opens next, how long it works.

Used by the out-of-hours automatic replies ("we are closed, back on Monday 09:00"), later by SLA timers
and routing. Pure: no I/O, only `zoneinfo`, pydantic, the `holidays` package and (for `describe_next_open`) Babel.

Semantics, all in the calendar's local wall time (`timezone`):

- `weekly` maps a weekday to its opening intervals "HH:MM-HH:MM". "00:00-24:00" is the whole day; an
  end before the start crosses midnight ("22:00-02:00" on Friday: Friday 22:00 to Saturday 02:00). An
  interval belongs to the day it starts on.
- `closed` dates are holidays: the date is closed from 00:00 to 24:00, and no interval starts on it. A
  night interval of the day before ends at the holiday's midnight.
- Intervals that touch or overlap (09:00-12:00 and 12:00-13:00, Friday 22:00-02:00 and Saturday
  02:00-04:00, Monday 00:00-24:00 and Tuesday 00:00-24:00) are one opening for `next_close`.
- Daylight saving time: a wall time that does not exist (spring forward, 02:30 in Berlin on
  2026-03-29) means the first instant that exists after it (03:00); a wall time that happens twice
  (fall back) means its first occurrence (fold=0).
- `holidays` names a country (and optionally a subdivision) whose public holidays, from the `holidays`
  package, are closed dates too, exactly like `closed` ones. They are computed per year when first
  needed, and cached.
- `open_always` is a 24/7 team: open at every instant, holidays and `weekly` do not apply.

Searches look at most `HORIZON_DAYS` days ahead.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib
from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["HORIZON_DAYS", "WEEKDAYS", "BusinessHours", "HolidaySource", "Weekday", "describe_next_open"]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = get_args(Weekday)  # in `date.weekday()` order: Monday is 0
HORIZON_DAYS = 400
_DAY = 24 * 60  # minutes
_EXAMPLE = "e.g. 09:00-17:30"
_INTERVAL = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)", re.ASCII)
_SHORT_DIGITS = re.compile(r"\d{1,2}:\d{1,2}-\d{1,2}:\d{1,2}", re.ASCII)

# An interval as minutes after the midnight that starts its day; the end may pass 24:00 (up to 47:59).
_Minutes = tuple[int, int]
_Interval = tuple[datetime, datetime]  # [start, end) as aware UTC instants
# A country's public holidays: (ISO country code, subdivision code or None).
_HolidayKey = tuple[str, str | None]


@functools.lru_cache(maxsize=256)
def _public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    """The public holidays of `country` (and `subdivision`) in `year`, from the holidays package."""
    return frozenset(holidays_lib.country_holidays(country, subdiv=subdivision, years=year))


def _default_weekly() -> dict[Weekday, list[str]]:
    return {day: ["09:00-17:00"] for day in WEEKDAYS[:5]}


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_interval(where: str, text: str) -> _Minutes:
    """`text` "HH:MM-HH:MM" as minutes; ValueError naming `where`, the problem and the fix."""
    match = _INTERVAL.fullmatch(text)
    if match is None:
        if _SHORT_DIGITS.fullmatch(text):
            raise ValueError(
                f"{where}: {text!r} is not HH:MM-HH:MM: write hours and minutes with two digits ({_EXAMPLE})"
            )
        raise ValueError(f"{where}: {text!r} is not HH:MM-HH:MM ({_EXAMPLE})")
    start_h, start_m, end_h, end_m = (int(group) for group in match.groups())
    if start_h == 24 and start_m == 0:
        raise ValueError(f"{where}: {text!r} starts at 24:00; start the next day at 00:00 instead")
    if start_h > 23 or start_m > 59 or end_m > 59 or end_h > 24 or (end_h == 24 and end_m != 0):
        raise ValueError(f"{where}: {text!r} is not HH:MM-HH:MM ({_EXAMPLE})")
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start == end:
        raise ValueError(
            f"{where}: {text!r} starts and ends at the same time; for the whole day write 00:00-24:00, "
            "for a closed day leave the day out"
        )
    if end < start:  # crosses midnight
        end += _DAY
    return start, end


def _parse_day(day: str, entries: list[str]) -> tuple[_Minutes, ...]:
    """One day's intervals, sorted; ValueError for a bad one or for two that overlap."""
    parsed = sorted(
        (_parse_interval(f"weekly.{day}[{index}]", text), index, text) for index, text in enumerate(entries)
    )
    latest: tuple[_Minutes, int, str] | None = None  # the interval seen so far that ends last
    for item in parsed:
        (start, end), index, text = item
        if latest is not None and start < latest[0][1]:
            (first_start, first_end), first_index, first_text = latest
            last_end = max(first_end, end)
            join = (
                f" ({_hhmm(first_start)}-{_hhmm(last_end % _DAY or _DAY)})"
                if last_end - first_start < _DAY
                else ""
            )
            raise ValueError(
                f"weekly.{day}[{first_index}] {first_text!r} overlaps weekly.{day}[{index}] {text!r}: "
                f"let one end before the other starts, or join them into one interval{join}"
            )
        if latest is None or end > latest[0][1]:
            latest = item
    return tuple(minutes for minutes, _, _ in parsed)


def _aware(value: datetime, name: str) -> datetime:
    """`value` as a UTC instant; ValueError when it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC)), got naive {value.isoformat()}"
        )
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class _Calendar:
    """The parsed form of a `BusinessHours`, with the computations."""

    zone: ZoneInfo
    week: tuple[tuple[_Minutes, ...], ...]  # by `date.weekday()`
    closed: frozenset[date]
    holidays: _HolidayKey | None = None

    def is_closed(self, day: date) -> bool:
        """Whether local date `day` is closed all day: listed in `closed`, or a public holiday."""
        if day in self.closed:
            return True
        return self.holidays is not None and day in _public_holidays(*self.holidays, day.year)

    def instant(self, wall: datetime) -> datetime:
        """The UTC instant of a naive local wall time (see the module's DST rules)."""
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if first.astimezone(self.zone).replace(tzinfo=None) == wall:
            return first  # it exists; fold=0 is the first of two occurrences
        # In a gap: `first` (read with the offset before the transition) lies after the transition,
        # `earlier` (with the offset after it) before it. The first instant that exists after `wall` is
        # the transition: bisect for it, to the second (tzdata's transitions are whole seconds).
        offset = first.astimezone(self.zone).utcoffset()
        earlier = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        low, high = math.floor(earlier.timestamp()), math.ceil(first.timestamp())
        if low >= high:  # not a forward gap (not in real tzdata): keep fold=0
            return first
        while high - low > 1:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, self.zone).utcoffset() == offset:
                high = middle
            else:
                low = middle
        return datetime.fromtimestamp(high, UTC)

    def local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def day(self, day: date) -> list[_Interval]:
        """The intervals that start on local date `day`, sorted."""
        if self.is_closed(day):
            return []
        night_ends = _DAY if self.is_closed(day + timedelta(days=1)) else 2 * _DAY
        midnight = datetime.combine(day, time())
        found = []
        for start, end in self.week[day.weekday()]:
            end = min(end, night_ends)
            opens = self.instant(midnight + timedelta(minutes=start))
            closes = self.instant(midnight + timedelta(minutes=end))
            if opens < closes:  # not swallowed by a DST gap
                found.append((opens, closes))
        return found

    def openings(self, first: date, last: date) -> Iterator[_Interval]:
        """The merged open intervals that start on local dates `first`..`last` (and those they join)."""
        current: _Interval | None = None
        day = first
        while day <= last:
            for opens, closes in self.day(day):
                if current is None:
                    current = (opens, closes)
                elif opens <= current[1]:
                    current = (current[0], max(current[1], closes))
                else:
                    yield current
                    current = (opens, closes)
            day += timedelta(days=1)
        if current is not None:
            yield current

    def is_open(self, at: datetime) -> bool:
        today = self.local_date(at)
        return any(
            opens <= at < closes
            for day in (today - timedelta(days=1), today)
            for opens, closes in self.day(day)
        )

    def search(self, at: datetime) -> Iterator[_Interval]:
        """The merged open intervals that end after `at`, up to `HORIZON_DAYS` ahead."""
        today = self.local_date(at)
        for opening in self.openings(today - timedelta(days=1), today + timedelta(days=HORIZON_DAYS)):
            if opening[1] > at:
                yield opening


@functools.lru_cache(maxsize=512)
def _compile(
    timezone: str,
    weekly: tuple[tuple[str, tuple[str, ...]], ...],
    closed: frozenset[date],
    holidays: _HolidayKey | None = None,
) -> _Calendar:
    days = dict(weekly)
    week = tuple(_parse_day(day, list(days.get(day, ()))) for day in WEEKDAYS)
    return _Calendar(ZoneInfo(timezone), week, closed, holidays)


class HolidaySource(BaseModel):
    """Public holidays of a country (optionally of one of its subdivisions), from the holidays package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    country: str = Field(min_length=2, max_length=3, description="ISO 3166-1 country code, e.g. HU, DE or US")
    subdivision: str | None = Field(
        None,
        min_length=1,
        max_length=10,
        description="a state or region code of the country, e.g. BY for Bavaria",
    )

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        country = value.strip().upper()
        if country not in holidays_lib.list_supported_countries():
            raise ValueError(
                f"{value!r} is not a country the holidays package knows; use an ISO 3166-1 code such as "
                "HU, DE, AT or US"
            )
        return country

    @field_validator("subdivision")
    @classmethod
    def _subdivision(cls, value: str | None, info: ValidationInfo) -> str | None:
        country = info.data.get("country")
        if value is None or country is None:  # no country: its own error says so
            return value
        subdivisions = holidays_lib.list_supported_countries()[country]
        if value not in subdivisions:
            listing = ", ".join(subdivisions[:40]) if subdivisions else "none"
            raise ValueError(
                f"{value!r} is not a subdivision of {country} (known: {listing}); leave it out for the "
                "national holidays"
            )
        return value

    def key(self) -> _HolidayKey:
        return (self.country, self.subdivision)


class BusinessHours(BaseModel):
    """When a team works, in its time zone (see the module's docstring for the exact rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field("UTC", description="IANA time zone of the hours, e.g. Europe/Berlin")
    weekly: dict[Weekday, list[str]] = Field(
        default_factory=_default_weekly,
        description='weekday -> opening intervals "HH:MM-HH:MM" in local time, e.g. {"mon": ["09:00-12:30", '
        '"13:30-18:00"]}; "00:00-24:00" is the whole day, an end before the start crosses midnight '
        '("22:00-02:00"); a day left out is closed. Default: mon-fri 09:00-17:00',
    )
    closed: list[date] = Field(
        default_factory=list, description="holidays: local dates closed all day, e.g. 2026-12-25"
    )
    holidays: HolidaySource | None = Field(
        None,
        description='public holidays closed all day too, e.g. {"country": "HU"} or {"country": "DE", '
        '"subdivision": "BY"}',
    )
    open_always: bool = Field(
        False, description="open 24/7, holidays included (weekly, closed and holidays do not apply)"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"timezone: {value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value

    @field_validator("weekly", mode="before")
    @classmethod
    def _weekdays(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if key not in WEEKDAYS:
                    guess = str(key).strip().lower()[:3]
                    hint = f" (did you mean {guess!r}?)" if guess in WEEKDAYS else ""
                    raise ValueError(
                        f"weekly: {key!r} is not a weekday{hint}; use mon, tue, wed, thu, fri, sat or sun"
                    )
        return value

    @field_validator("weekly")
    @classmethod
    def _intervals(cls, value: dict[Weekday, list[str]]) -> dict[Weekday, list[str]]:
        for day, entries in value.items():
            _parse_day(day, entries)
        return value

    def _calendar(self) -> _Calendar:
        weekly = tuple(sorted((day, tuple(entries)) for day, entries in self.weekly.items()))
        source = self.holidays.key() if self.holidays is not None else None
        return _compile(self.timezone, weekly, frozenset(self.closed), source)

    def is_open(self, at: datetime) -> bool:
        """Whether the team works at instant `at` (aware; ValueError when naive)."""
        moment = _aware(at, "at")
        return self.open_always or self._calendar().is_open(moment)

    def next_open(self, at: datetime) -> datetime | None:
        """`at` (in the calendar's zone) when open then; else the start of the next opening, in the
        calendar's zone; None when there is none within `HORIZON_DAYS` days (no hours at all)."""
        moment = _aware(at, "at")
        calendar = self._calendar()
        if self.open_always:
            return moment.astimezone(calendar.zone)
        if not any(calendar.week):
            return None
        for opens, _ in calendar.search(moment):
            return max(opens, moment).astimezone(calendar.zone)
        return None

    def next_close(self, at: datetime) -> datetime | None:
        """The end of the opening `at` is in (touching and overlapping intervals joined), in the
        calendar's zone; None when closed at `at`, when `open_always`, or when it stays open for more
        than `HORIZON_DAYS` days."""
        moment = _aware(at, "at")
        if self.open_always:
            return None
        calendar = self._calendar()
        for opens, closes in calendar.search(moment):
            if opens > moment:
                return None
            horizon = datetime.combine(calendar.local_date(moment) + timedelta(days=HORIZON_DAYS), time())
            if closes >= calendar.instant(horizon):
                return None
            return closes.astimezone(calendar.zone)
        return None

    def open_seconds_between(self, start: datetime, end: datetime) -> float:
        """The business seconds in [start, end): real elapsed seconds (a DST day's hour counts once);
        0 when `end` is not after `start`."""
        low, high = _aware(start, "start"), _aware(end, "end")
        if high <= low:
            return 0.0
        if self.open_always:
            return (high - low).total_seconds()
        calendar = self._calendar()
        total = 0.0
        first, last = calendar.local_date(low) - timedelta(days=1), calendar.local_date(high)
        for opens, closes in calendar.openings(first, last):
            if opens >= high:
                break
            if closes > low:
                total += (min(closes, high) - max(opens, low)).total_seconds()
        return total

    def add_open_seconds(self, start: datetime, seconds: float) -> datetime | None:
        """The instant when `seconds` business seconds have passed since `start` (an SLA's due time):
        counting only open time, in UTC; `start` itself when `seconds` <= 0 and open (else the next
        opening); None when the hours never open enough within `HORIZON_DAYS` days."""
        moment = _aware(start, "start").astimezone(UTC)
        left = max(0.0, float(seconds))
        if self.open_always:
            return moment + timedelta(seconds=left)
        calendar = self._calendar()
        if not any(calendar.week):
            return None
        for opens, closes in calendar.search(moment):
            begin = max(opens, moment)
            span = (closes - begin).total_seconds()
            if left <= span:
                return (begin + timedelta(seconds=left)).astimezone(UTC)
            left -= span
        return None


def _locale(language: str) -> Locale:
    """Babel's locale for a language tag ("de", "pt-BR", "en_US"); its base language, else English."""
    tag = language.strip().replace("-", "_")
    for candidate in (tag, tag.split("_")[0]):
        try:
            return Locale.parse(candidate)
        except (ValueError, UnknownLocaleError, TypeError):
            continue
    return Locale("en")


def describe_next_open(hours: BusinessHours, at: datetime, language: str) -> str:
    """When the team opens next, for a customer: "Monday 09:00" (de "Montag 09:00", fr "lundi 09:00")
    within 6 days of `at`, else the date ("Apr 13, 2026 09:00"); local to the calendar; "" when never."""
    opens = hours.next_open(at)
    if opens is None:
        return ""
    locale = _locale(language)
    if (opens.date() - at.astimezone(opens.tzinfo).date()).days <= 6:
        pattern = "EEEE HH:mm"
    else:
        pattern = f"{locale.date_formats['medium'].pattern} HH:mm"
    return babel_dates.format_datetime(opens, pattern, tzinfo=opens.tzinfo, locale=locale)
