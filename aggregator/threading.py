"""Which conversation a message belongs to."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from aggregator.model import ConversationStatus, MessageFlags, ThreadHints

# Reply and forward prefixes in the languages our customers write in, as mail clients put them:
# Re/RE/Aw/AW/Antw (de, nl), Fwd/Fw/WG (de), TR (fr), RV (es), VS/SV (nordic), Ynt/İlt (tr),
# Vá/Továbbítás (hu), Ref; also numbered ("Re[2]:", "Re^2:") and repeated ("Re: Fwd: Re:").
_PREFIX = re.compile(
    r"^(?:\s*(?:re|aw|antw|fwd?|wg|tr|rv|vs|sv|ynt|ilt|İlt|vá|va|továbbítás|ref|r)"
    r"(?:\s*[\[(^]\s*\d+\s*[\])]?)?\s*[:\uff1a]\s*)+",
    re.IGNORECASE,
)
# Mailing-list and ticket tags some clients add in front: "[Shop] Re: ..." keeps its tag.
_SPACES = re.compile(r"\s+")


def normalize_subject(subject: str | None) -> str:
    """The subject without reply/forward prefixes, whitespace collapsed, case folded ("" when none)."""
    if not subject:
        return ""
    text = _SPACES.sub(" ", subject).strip()
    text = _PREFIX.sub("", text)
    return text.strip().casefold()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A conversation a message could join, as far as threading needs to know it."""

    id: str
    contact_id: str
    subject_key: str
    last_activity_at: datetime


def choose_conversation(
    hints: ThreadHints,
    *,
    contact_id: str,
    now: datetime,
    ref_matches: Sequence[str] = (),
    key_matches: Mapping[str, tuple[str, str]] | None = None,
    of_contact: Sequence[Candidate] = (),
) -> str | None:
    """The conversation a message joins, or None for a new one.

    `ref_matches`: conversations named by the message's conversation and message refs (already
    checked to belong to its channel account). `key_matches`: key -> (conversation, its contact).
    `of_contact`: the sender's conversations on the same channel account, latest activity last.
    """
    if ref_matches:
        return ref_matches[0]
    matches = key_matches or {}
    for key in hints.keys:
        found = matches.get(key)
        if found is not None:
            return found[0]
    for key in hints.contact_keys:
        found = matches.get(key)
        if found is not None and found[1] == contact_id:
            return found[0]
    if hints.subject_key:
        oldest = now - hints.subject_window if hints.subject_window is not None else None
        for candidate in reversed(of_contact):
            if oldest is not None and candidate.last_activity_at < oldest:
                break
            if candidate.subject_key == hints.subject_key:
                return candidate.id
    if hints.by_contact and of_contact:
        return of_contact[-1].id
    return None


def status_after_inbound(status: ConversationStatus, flags: MessageFlags) -> ConversationStatus:
    """A customer's message reopens a resolved, snoozed or pending conversation; automatic mail does not."""
    if flags.automatic or flags.echo or status is ConversationStatus.OPEN:
        return status
    return ConversationStatus.OPEN
