"""Store queries: calendars (being built)."""

from __future__ import annotations

from aggregator.store.base import StoreBase


class CalendarQueries(StoreBase):
    pass
