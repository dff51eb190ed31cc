"""The email channel's settings: the documented keys admins and scripts rely on, and a few tunables."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, StringConstraints, ValidationInfo, field_validator

from channels.base import ChannelConfig

Security = Literal["none", "starttls", "tls"]

# Good enough to refuse typos ("shop.example", "a@b@c"); the server is the judge of the rest.
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_ON = {"on", "true", "yes", "1"}
_OFF = {"off", "false", "no", "0"}

Host = Annotated[str, StringConstraints(min_length=1, max_length=255, strip_whitespace=True)]
Folder = Annotated[str, StringConstraints(min_length=1, max_length=255)]

DEFAULT_PORTS = {
    ("imap", "tls"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
    ("smtp", "tls"): 465,
    ("smtp", "starttls"): 587,
    ("smtp", "none"): 25,
}


class EmailChannelConfig(ChannelConfig):
    address: str = Field(max_length=320, description="the support address customers write to")
    display_name: str | None = Field(None, max_length=200, description="the From name of our mail")
    imap_host: Host
    imap_port: int | None = Field(None, ge=1, le=65535, description="default: 993 for tls, else 143")
    imap_user: str | None = Field(None, max_length=320, description="default: the address")
    imap_password: SecretStr = Field(min_length=1)
    imap_security: Security = "tls"
    imap_folders: list[Folder] = Field(default_factory=lambda: ["INBOX"], min_length=1, max_length=50)
    smtp_host: Host
    smtp_port: int | None = Field(None, ge=1, le=65535, description="default: 465 for tls, 587 for starttls")
    smtp_user: str | None = Field(None, max_length=320, description="default: the IMAP user")
    smtp_password: SecretStr | None = Field(None, description="default: the IMAP password")
    smtp_security: Security = "starttls"
    reply_to_token: bool = Field(
        True, description="on: our mail says Reply-To: local+<token>@domain, so replies find their thread"
    )
    after_store: str = Field(
        "none", description="what to do on the server once a mail is stored: none, seen or move:<folder>"
    )
    # Beyond the documented keys: tunables with sane defaults.
    message_id_domain: str | None = Field(None, max_length=255, description="default: the address's domain")
    sent_folder: str | None = Field(None, max_length=255, description="APPEND a copy of what we send here")
    subject_match_days: float = Field(
        14.0, ge=0, le=365, description="a reply threads by subject (same sender only) this long"
    )
    poll_seconds: float = Field(60.0, gt=0, le=3600, description="polling interval without IDLE")
    idle_seconds: float = Field(
        25 * 60.0, gt=0, lt=29 * 60.0, description="IDLE is re-issued after this long (RFC 2177: < 29 min)"
    )
    timeout_seconds: float = Field(30.0, gt=0, le=300)
    tls_verify: bool = True
    tls_ca_file: str | None = Field(None, max_length=4096, description="a CA bundle for self-hosted servers")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if not _ADDRESS.match(value):
            raise ValueError("must be an email address such as support@shop.example")
        return value

    @field_validator("reply_to_token", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _ON:
                return True
            if word in _OFF:
                return False
            raise ValueError("must be on or off")
        return value

    @field_validator("after_store")
    @classmethod
    def _after_store(cls, value: str, info: ValidationInfo) -> str:
        if value in ("none", "seen"):
            return value
        target = value[5:].strip() if value.startswith("move:") else ""
        if not target:
            raise ValueError("must be none, seen or move:<folder> (mail is never deleted)")
        if target in info.data.get("imap_folders", ()):
            raise ValueError(f"moves mail to {target!r}, which is also read (imap_folders)")
        return value

    @field_validator("imap_folders", mode="before")
    @classmethod
    def _folder_list(cls, value: Any) -> Any:
        # From the CLI (--set imap_folders=INBOX,Support) a list arrives as one string.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("imap_folders")
    @classmethod
    def _folders(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each folder once")
        return value

    @property
    def move_to(self) -> str | None:
        return self.after_store[5:].strip() if self.after_store.startswith("move:") else None

    @property
    def local_part(self) -> str:
        return self.address.rsplit("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1].lower()

    @property
    def id_domain(self) -> str:
        return (self.message_id_domain or self.domain).lower()

    def port(self, service: Literal["imap", "smtp"]) -> int:
        explicit = self.imap_port if service == "imap" else self.smtp_port
        security = self.imap_security if service == "imap" else self.smtp_security
        return explicit or DEFAULT_PORTS[(service, security)]
