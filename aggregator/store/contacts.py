"""Contacts: search, details, edits and explicit merges."""

from __future__ import annotations

from aggregator.store.base import StoreBase


class ContactQueries(StoreBase):
    pass
