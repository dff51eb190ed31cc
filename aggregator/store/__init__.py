"""The SQL record: schema, migrations and queries."""

from aggregator.store.base import ChannelAccount, Conflict, Invalid, NotFound
from aggregator.store.ingest_batch import BatchOutcome, PreparedInbound, StoredAttachment
from aggregator.store.store import OutboxItem, Store, TokenInfo, Workspace

__all__ = [
    "BatchOutcome",
    "ChannelAccount",
    "Conflict",
    "Invalid",
    "NotFound",
    "OutboxItem",
    "PreparedInbound",
    "Store",
    "StoredAttachment",
    "TokenInfo",
    "Workspace",
]
