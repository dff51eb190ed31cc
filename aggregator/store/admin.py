"""Admin records: users, teams, API tokens and channel accounts, for the API."""

from __future__ import annotations

from aggregator.store.base import StoreBase


class AdminQueries(StoreBase):
    pass
