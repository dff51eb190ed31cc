"""Store queries: sla (being built)."""

from __future__ import annotations

from aggregator.store.base import StoreBase


class SlaQueries(StoreBase):
    pass
