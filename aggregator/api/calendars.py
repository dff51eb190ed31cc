"""/api/v1 endpoints: calendars (being built)."""

from __future__ import annotations

from aggregator.api.framework import Api

api = Api()
