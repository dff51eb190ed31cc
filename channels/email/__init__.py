"""The email channel: IMAP in (IDLE or polling), SMTP out, real-world MIME, threading by evidence."""

from channels.email.adapter import EmailChannel
from channels.email.config import EmailChannelConfig

__all__ = ["EmailChannel", "EmailChannelConfig"]
