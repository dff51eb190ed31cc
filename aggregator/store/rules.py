"""Store queries: rules (being built)."""

from __future__ import annotations

from aggregator.store.base import StoreBase


class RuleQueries(StoreBase):
    pass
