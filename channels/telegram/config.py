"""The settings of a Telegram channel account."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationInfo, field_validator

from channels.base import ChannelConfig

# What @BotFather hands out: the bot's numeric id, a colon, then 35 characters of A-Z a-z 0-9 _ -.
TOKEN_PATTERN = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{20,100}$")
DEFAULT_API_BASE_URL = "https://api.telegram.org/bot"
DEFAULT_FILE_BASE_URL = "https://api.telegram.org/file/bot"


class TelegramChannelConfig(ChannelConfig):
    bot_token: SecretStr = Field(description="the token @BotFather gave the bot (123456789:AA...)")
    mode: Literal["polling", "webhook"] = Field(
        "polling",
        description="polling: the daemon asks Telegram for updates (works behind NAT, one process "
        "reads); webhook: Telegram POSTs each update to public_url (every process can take them)",
    )
    public_url: AnyHttpUrl | None = Field(
        None,
        validate_default=True,
        description="the daemon's address as Telegram reaches it (https://support.example.com); the "
        "webhook is public_url + /channels/telegram/<channel id>/webhook. Needed for mode=webhook",
    )
    api_base_url: AnyHttpUrl = Field(
        AnyHttpUrl(DEFAULT_API_BASE_URL),
        description="Bot API address, the token appended (a local Bot API server: http://host:8081/bot)",
    )
    file_base_url: AnyHttpUrl = Field(
        AnyHttpUrl(DEFAULT_FILE_BASE_URL), description="file download address, the token appended"
    )
    accept_groups: bool = Field(
        False, description="take messages from groups the bot is in too (default: private chats only)"
    )
    formatting: Literal["plain", "markdownv2"] = Field(
        "plain",
        description="how agent text is sent: as plain text, or as MarkdownV2 (escaped, so it arrives "
        "exactly as written)",
    )
    poll_timeout_seconds: int = Field(50, ge=0, le=300, description="getUpdates long-poll time")
    timeout_seconds: float = Field(15.0, gt=0, le=300, description="time limit of one API request")
    rate_limit: bool = Field(
        True,
        description="keep to Telegram's limits, shared by all processes: about 1 message/s per chat, "
        "20/min per group, 30/s per bot",
    )

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        if not TOKEN_PATTERN.match(value.get_secret_value()):
            raise ValueError(
                "not a bot token: expected <bot id>:<secret> as @BotFather gives it (123456789:AA...)"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _webhook_needs_public_url(cls, value: AnyHttpUrl | None, info: ValidationInfo) -> AnyHttpUrl | None:
        if value is None and info.data.get("mode") == "webhook":
            raise ValueError(
                "needed for mode=webhook (the address Telegram POSTs updates to); or use mode=polling"
            )
        return value

    @property
    def bot_id(self) -> str:
        return self.bot_token.get_secret_value().split(":", 1)[0]

    @property
    def official_api(self) -> bool:
        """True on api.telegram.org, where bots may download files of at most 20 MB."""
        return str(self.api_base_url).startswith("https://api.telegram.org/")
