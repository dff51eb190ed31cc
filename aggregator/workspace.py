"""A workspace's settings: its languages, time zone, business hours, automatic replies and routing.

Stored as JSON in `workspaces.settings`, changed through `PATCH /api/v1/workspace`, read by ingest
(language detection) and the automatic replies through `SettingsCache`, which re-reads them after a
few seconds so that an admin's change reaches every process without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from aggregator.hours import BusinessHours
from aggregator.language import REQUIRED, Detectors, LanguageDetector, base_language

log = logging.getLogger(__name__)

DEFAULT_PERIOD_DAYS = 4.0
TemplateRef = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    Field(description="a template's id or shortcode"),
]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Acknowledge(_Settings):
    """The reply to the first message of a new conversation on one channel account."""

    enabled: bool = True
    template: TemplateRef


class OutOfHours(_Settings):
    """The reply to a customer who writes while the team is closed (see `hours`)."""

    enabled: bool = False
    template: TemplateRef | None = None
    channels: list[str] | None = Field(
        None, description="channel account ids it applies to; null: every channel account"
    )
    calendar_id: str | None = Field(
        None,
        max_length=64,
        description="the calendar whose hours it follows; null: the conversation's team's calendar, "
        "else the workspace's `hours`",
    )


class AutoReplies(_Settings):
    period_days: float = Field(
        DEFAULT_PERIOD_DAYS,
        gt=0,
        le=365,
        description="at most one automatic reply per contact in this many days (RFC 3834 suggests 7; "
        "default 4)",
    )
    acknowledge: dict[str, Acknowledge] = Field(
        default_factory=dict, description="channel account id -> its acknowledgement of new conversations"
    )
    out_of_hours: OutOfHours = Field(default_factory=OutOfHours)


class Routing(_Settings):
    """How routing gives new and reopened conversations to a team and an agent (aggregator/routing.py)."""

    enabled: bool = Field(True, description="route conversations to teams and agents")
    reassign_offline: bool = Field(
        False,
        description="when an agent goes offline, route their unresolved conversations that routing gave "
        "them to someone else (false: they keep them)",
    )


class WorkspaceSettings(_Settings):
    languages: list[str] = Field(
        default_factory=lambda: list(REQUIRED),
        min_length=2,
        max_length=75,
        description="the languages customers write in: detection chooses among these only (ISO 639-1)",
    )
    timezone: str = Field("UTC", description="IANA time zone for dates in templates, e.g. Europe/Berlin")
    hours: BusinessHours | None = Field(
        None, description="when the team works; out-of-hours replies need it (null: no calendar)"
    )
    auto_replies: AutoReplies = Field(default_factory=AutoReplies)
    routing: Routing = Field(default_factory=Routing)

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        codes = list(dict.fromkeys(base_language(v) or v for v in value))
        LanguageDetector.check_codes(codes)
        return codes

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone (e.g. Europe/Berlin, America/New_York)"
            ) from None
        return value

    @classmethod
    def load(cls, raw: Any) -> WorkspaceSettings:
        """The stored settings; a setting that no longer validates (an older version's, or one this
        version does not know) gives its default, and the others stay: a language dropped from
        detection must not also switch the automatic replies off, nor a PATCH of the time zone
        (which saves what this returns) erase them."""
        try:
            return cls.model_validate(raw or {})
        except ValidationError as exc:
            if not isinstance(raw, dict):
                log.error("workspace settings do not validate, using the defaults until fixed: %s", exc)
                return cls()
            kept: dict[str, Any] = {}
            for name, value in raw.items():
                if name not in cls.model_fields:
                    continue
                try:
                    cls.model_validate({name: value})
                except ValidationError:
                    continue
                kept[name] = value
            dropped = sorted(str(name) for name in raw if name not in kept)
            log.error(
                "workspace settings do not validate, using the defaults for %s until fixed: %s",
                ", ".join(dropped),
                exc,
            )
            try:
                return cls.model_validate(kept)
            except ValidationError:
                return cls()


class SettingsCache:
    """Each workspace's settings, re-read after `ttl` seconds; and the language detector they call for."""

    def __init__(
        self, load: Callable[[str], Awaitable[Any]], *, ttl: float = 10.0, detectors: Detectors | None = None
    ) -> None:
        self._load = load
        self.ttl = ttl
        self.detectors = detectors or Detectors()
        self._known: dict[str, tuple[float, WorkspaceSettings]] = {}

    async def get(self, workspace_id: str) -> WorkspaceSettings:
        known = self._known.get(workspace_id)
        now = time.monotonic()
        if known is not None and now - known[0] < self.ttl:
            return known[1]
        settings = WorkspaceSettings.load(await self._load(workspace_id))
        self._known[workspace_id] = (now, settings)
        return settings

    def forget(self, workspace_id: str) -> None:
        self._known.pop(workspace_id, None)

    async def detector(self, workspace_id: str) -> LanguageDetector:
        return self.detectors.get((await self.get(workspace_id)).languages)
