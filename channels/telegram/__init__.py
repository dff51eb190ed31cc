"""The Telegram channel: a support bot on the Bot API (long polling or webhook), through python-telegram-bot."""

import os

# python-telegram-bot 22 gives time periods (RetryAfter.retry_after, durations) as timedelta once this
# is set, and warns on every such value otherwise: take the behaviour of its next major version now.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from channels.telegram.adapter import TelegramChannel
from channels.telegram.config import TelegramChannelConfig

__all__ = ["TelegramChannel", "TelegramChannelConfig"]
