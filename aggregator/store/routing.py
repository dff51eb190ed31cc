"""Store queries: routing (being built)."""

from __future__ import annotations

from aggregator.store.base import StoreBase


class RoutingQueries(StoreBase):
    pass
