"""The SQL record: schema, migrations and queries."""

from aggregator.store.ingest_batch import BatchOutcome, PreparedInbound, StoredAttachment
from aggregator.store.store import ChannelAccount, Conflict, NotFound, OutboxItem, Store, TokenInfo, Workspace

__all__ = [
    "BatchOutcome",
    "ChannelAccount",
    "Conflict",
    "NotFound",
    "OutboxItem",
    "PreparedInbound",
    "Store",
    "StoredAttachment",
    "TokenInfo",
    "Workspace",
]
