"""Which conversation a message belongs to."""

from __future__ import annotations

from collections.abc import Mapping

from aggregator.model import ConversationStatus, MessageFlags, ThreadHints


def choose_conversation(
    hints: ThreadHints, key_matches: Mapping[str, str], latest_of_contact: str | None
) -> str | None:
    """The conversation a message joins: the first hint key that names one, else the contact's latest
    conversation on the same channel account (when the channel threads by contact), else None (new)."""
    for key in hints.keys:
        conversation_id = key_matches.get(key)
        if conversation_id is not None:
            return conversation_id
    if hints.by_contact:
        return latest_of_contact
    return None


def status_after_inbound(status: ConversationStatus, flags: MessageFlags) -> ConversationStatus:
    """A customer's message reopens a resolved, snoozed or pending conversation; automatic mail does not."""
    if flags.automatic or flags.echo or status is ConversationStatus.OPEN:
        return status
    return ConversationStatus.OPEN
