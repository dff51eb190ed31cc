"""Telegram updates (raw Bot API JSON) -> what the core stores.

Pure functions: no network. The adapter downloads the files an update names (`FileRef`) and adds them
to the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aggregator.model import Identity, InboundAttachment, InboundMessage, Reachability, ThreadHints

KIND = "telegram"
# The update types the bot asks for: messages, their edits and the bot's own membership in a chat
# (private chats: the user blocked or unblocked the bot).
ALLOWED_UPDATES = ("message", "edited_message", "my_chat_member")


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file a message carries, to be fetched with getFile."""

    file_id: str
    filename: str
    content_type: str
    size: int | None
    what: str  # "photo", "voice message" ... for explanations


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message to store, with the files still to download."""

    message: InboundMessage
    files: tuple[FileRef, ...] = ()


@dataclass(frozen=True, slots=True)
class MemberChange:
    """The user blocked (`kicked`) or unblocked the bot in a private chat."""

    identity: Identity
    reachability: Reachability


@dataclass(frozen=True, slots=True)
class Skipped:
    """An update with nothing to store (another kind, a group while groups are off, a bot)."""

    reason: str


Normalised = Incoming | MemberChange | Skipped


@dataclass(frozen=True, slots=True)
class Settings:
    account_id: str
    accept_groups: bool = False


def external_id(chat_id: int | str, message_id: int | str) -> str:
    """Dedupe key of a Telegram message: message ids are only unique within their chat."""
    return f"{chat_id}:{message_id}"


def thread_ref(chat_id: int, topic_id: int | None = None) -> str:
    """Where replies go: the chat, and the forum topic within it."""
    return f"{chat_id}/{topic_id}" if topic_id else str(chat_id)


def parse_thread_ref(value: str | None) -> tuple[int, int | None] | None:
    """(chat id, forum topic id) from thread_ref(); None when `value` is not one."""
    if not value:
        return None
    chat, _, topic = value.partition("/")
    try:
        return int(chat), (int(topic) if topic else None)
    except ValueError:
        return None


def identity_of(user: Mapping[str, Any]) -> Identity:
    name = " ".join(str(part) for part in (user.get("first_name"), user.get("last_name")) if part)
    return Identity(KIND, str(user["id"]), name or None, handle=user.get("username") or None)


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and value > 0 else None


def normalise(update: Mapping[str, Any], settings: Settings) -> Normalised:
    """What one update means for the inbox. Raises KeyError/TypeError/ValueError on a malformed one."""
    if "my_chat_member" in update:
        return _member_change(update["my_chat_member"])
    edited = "edited_message" in update
    message = update.get("edited_message") if edited else update.get("message")
    if not isinstance(message, Mapping):
        kinds = sorted(k for k in update if k != "update_id")
        return Skipped(f"update of type {', '.join(kinds) or 'unknown'} is not taken")
    chat = message["chat"]
    chat_id = int(chat["id"])
    chat_type = str(chat.get("type", "private"))
    if chat_type == "channel":
        return Skipped("channel posts are not taken")
    if chat_type != "private" and not settings.accept_groups:
        return Skipped(f"message in {chat_type} {chat_id}: groups are off (accept_groups)")
    sender = message.get("from")
    if not isinstance(sender, Mapping):
        return Skipped("message without a sender")
    if sender.get("is_bot"):
        return Skipped("message from a bot")
    message_id = int(message["message_id"])

    lines: list[str] = []
    text = message.get("text") or message.get("caption") or ""
    if text:
        lines.append(str(text))
    lines.extend(_described(message))
    files = _files(message)
    if not lines and not files:
        return Skipped(f"message {message_id} has nothing to store (a service message)")

    topic = message.get("message_thread_id") if message.get("is_topic_message") else None
    ref = thread_ref(chat_id, topic)
    replied = message.get("reply_to_message")
    external_refs: tuple[str, ...] = ()
    # A reply inside a forum topic names the topic's first message: that is not an answer to it.
    if (
        isinstance(replied, Mapping)
        and "message_id" in replied
        and not (topic and replied["message_id"] == topic)
    ):
        external_refs = (external_id(chat_id, replied["message_id"]),)
    if chat_type == "private":
        hints = ThreadHints(
            by_contact=True,
            thread_ref=ref,
            reply_refs=(str(message_id),),
            external_refs=external_refs,
        )
    else:
        # A group (or a topic of it) is one conversation, whoever writes.
        hints = ThreadHints(
            keys=(f"chat:{ref}",),
            by_contact=False,
            thread_ref=ref,
            reply_refs=(str(message_id),),
            external_refs=external_refs,
        )
    extra: dict[str, Any] = {
        "telegram": {
            "chat_id": chat_id,
            "chat_type": chat_type,
            "message_id": message_id,
            "update_id": update.get("update_id"),
        }
    }
    if chat_type != "private" and chat.get("title"):
        extra["telegram"]["chat_title"] = chat["title"]
    inbound = InboundMessage(
        channel_account_id=settings.account_id,
        external_id=external_id(chat_id, message_id),
        sender=identity_of(sender),
        text="\n".join(lines),
        thread=hints,
        subject=str(chat["title"]) if chat_type != "private" and chat.get("title") else None,
        sent_at=_time(message.get("date")),
        language_hint=sender.get("language_code") or None,
        extra=extra,
        edited_at=(_time(message.get("edit_date")) or _time(message.get("date"))) if edited else None,
    )
    # An edit changes the text (or caption); its files are those of the message already stored.
    return Incoming(inbound, () if edited else files)


def _member_change(change: Mapping[str, Any]) -> Normalised:
    chat = change["chat"]
    if chat.get("type") != "private":
        return Skipped("the bot's membership in a group changed")
    status = change["new_chat_member"]["status"]
    identity = identity_of(change["from"])
    at = _time(change.get("date"))
    if status == "kicked":
        return MemberChange(
            identity, Reachability(True, "blocked the bot in Telegram: no message reaches them", at)
        )
    if status == "member":
        return MemberChange(identity, Reachability(False, None, at))
    return Skipped(f"the bot's status in the chat became {status}")


def _largest_photo(sizes: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    return max(sizes, key=lambda s: (s.get("file_size") or 0, s.get("width", 0) * s.get("height", 0)))


_STICKER_TYPES = {
    "static": ("webp", "image/webp"),
    "animated": ("tgs", "application/x-tgsticker"),
    "video": ("webm", "video/webm"),
}


def _files(message: Mapping[str, Any]) -> tuple[FileRef, ...]:
    mid = message["message_id"]
    found: list[FileRef] = []
    photo = message.get("photo")
    if isinstance(photo, list) and photo:
        best = _largest_photo(photo)
        found.append(
            FileRef(best["file_id"], f"photo-{mid}.jpg", "image/jpeg", best.get("file_size"), "photo")
        )
    for key, what, default_name, default_type in (
        ("document", "file", "file", "application/octet-stream"),
        ("video", "video", "video-{mid}.mp4", "video/mp4"),
        ("animation", "animation", "animation-{mid}.mp4", "video/mp4"),
        ("audio", "audio file", "audio-{mid}.mp3", "audio/mpeg"),
        ("voice", "voice message", "voice-{mid}.ogg", "audio/ogg"),
        ("video_note", "video message", "video-note-{mid}.mp4", "video/mp4"),
    ):
        item = message.get(key)
        if isinstance(item, Mapping) and item.get("file_id"):
            if key == "document" and "animation" in message:
                continue  # Telegram sends an animation as both; keep one
            found.append(
                FileRef(
                    item["file_id"],
                    str(item.get("file_name") or default_name.format(mid=mid)),
                    str(item.get("mime_type") or default_type),
                    item.get("file_size"),
                    what,
                )
            )
    sticker = message.get("sticker")
    if isinstance(sticker, Mapping) and sticker.get("file_id"):
        kind = "video" if sticker.get("is_video") else "animated" if sticker.get("is_animated") else "static"
        ext, content_type = _STICKER_TYPES[kind]
        found.append(
            FileRef(
                sticker["file_id"], f"sticker-{mid}.{ext}", content_type, sticker.get("file_size"), "sticker"
            )
        )
    return tuple(found)


def _described(message: Mapping[str, Any]) -> list[str]:
    """Text for what carries no text or file of its own: a sticker's emoji, a location, a contact."""
    lines = []
    sticker = message.get("sticker")
    if isinstance(sticker, Mapping) and sticker.get("emoji") and not message.get("text"):
        lines.append(f"[sticker {sticker['emoji']}]")
    location = message.get("location")
    venue = message.get("venue")
    if isinstance(venue, Mapping):
        lines.append(f"[venue: {venue.get('title', '')}, {venue.get('address', '')}]")
    elif isinstance(location, Mapping):
        lines.append(f"[location: {location.get('latitude')}, {location.get('longitude')}]")
    contact = message.get("contact")
    if isinstance(contact, Mapping):
        name = " ".join(str(p) for p in (contact.get("first_name"), contact.get("last_name")) if p)
        lines.append(f"[contact: {name} {contact.get('phone_number', '')}]".replace("  ", " "))
    poll = message.get("poll")
    if isinstance(poll, Mapping):
        lines.append(f"[poll: {poll.get('question', '')}]")
    dice = message.get("dice")
    if isinstance(dice, Mapping):
        lines.append(f"[dice {dice.get('emoji', '')} {dice.get('value', '')}]")
    return lines


@dataclass(slots=True)
class Downloaded:
    """The outcome of fetching a message's files."""

    attachments: list[InboundAttachment] = field(default_factory=list)
    # Files recorded but not fetched, each with why (too big for bots, over our limit).
    missing: list[dict[str, Any]] = field(default_factory=list)


def with_files(incoming: Incoming, downloaded: Downloaded) -> InboundMessage:
    """The message with its downloaded files, and a line in the text for each file left behind."""
    message = incoming.message
    if not downloaded.attachments and not downloaded.missing:
        return message
    text = message.text
    if downloaded.missing:
        notes = [f"[{m['what']} {m['filename']} not downloaded: {m['reason']}]" for m in downloaded.missing]
        text = "\n".join([text, *notes]) if text else "\n".join(notes)
    extra = dict(message.extra)
    if downloaded.missing:
        extra["telegram"] = {**extra.get("telegram", {}), "files_not_downloaded": downloaded.missing}
    return replace(message, text=text, attachments=tuple(downloaded.attachments), extra=extra)
