"""Which conversation a message belongs to."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    subject_key: str
    last_activity_at: datetime


@dataclass(slots=True)
class ContactThreads:
    """One contact's conversations on one channel account that threading may pick."""

    latest: Candidate | None = None
    by_subject: dict[str, Candidate] = field(default_factory=dict)

    def add(self, candidate: Candidate) -> None:
        """Record activity (rows must come oldest first; a message that lands is the newest)."""
        if self.latest is None or candidate.last_activity_at >= self.latest.last_activity_at:
            self.latest = candidate
        known = self.by_subject.get(candidate.subject_key)
        if candidate.subject_key and (known is None or candidate.last_activity_at >= known.last_activity_at):
            self.by_subject[candidate.subject_key] = candidate

    def subject_of(self, conversation_id: str) -> str | None:
        if self.latest is not None and self.latest.id == conversation_id:
            return self.latest.subject_key
        return next((k for k, c in self.by_subject.items() if c.id == conversation_id), None)


def choose_conversation(
    hints: ThreadHints,
    *,
    contact_id: str,
    now: datetime,
    ref_matches: Sequence[str] = (),
    key_matches: Mapping[str, tuple[str, str]] | None = None,
    of_contact: ContactThreads | None = None,
) -> str | None:
    """The conversation a message joins, or None for a new one.

    `ref_matches`: conversations named by the message's conversation and message refs (already
    checked to belong to its channel account). `key_matches`: key -> (conversation, its contact).
    `of_contact`: the sender's conversations on the same channel account.
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
    if of_contact is None:
        return None
    if hints.subject_key:
        same = of_contact.by_subject.get(hints.subject_key)
        if same is not None and (
            hints.subject_window is None or same.last_activity_at >= now - hints.subject_window
        ):
            return same.id
    if hints.by_contact and of_contact.latest is not None:
        return of_contact.latest.id
    return None


def status_after_inbound(status: ConversationStatus, flags: MessageFlags) -> ConversationStatus:
    """A customer's message reopens a resolved, snoozed or pending conversation; automatic mail does not."""
    if flags.automatic or flags.echo or status is ConversationStatus.OPEN:
        return status
    return ConversationStatus.OPEN
