"""Daemon configuration: a TOML file plus AGGREGATOR_* environment overrides."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from aggregator.automation import ConfigRule

DEFAULT_CONFIG_FILE = Path("aggregator.toml")


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the problem."""


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch: int = Field(500, ge=1, le=5000)
    writer_process: bool = True


class OutboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(8, ge=1)
    backoff_base_seconds: float = Field(2.0, gt=0)
    backoff_max_seconds: float = Field(900.0, gt=0)
    send_timeout_seconds: float = Field(30.0, gt=0)
    claim_seconds: float = Field(120.0, gt=0)
    sweep_interval_seconds: float = Field(5.0, gt=0)
    workers: int = Field(4, ge=1, le=256)


class Settings(BaseSettings):
    """Every setting of the daemon. See config/aggregator.example.toml for the commented list."""

    model_config = SettingsConfigDict(
        env_prefix="AGGREGATOR_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str | None = None
    secret_key: str | None = None
    max_attachment_bytes: int = Field(25 * 1024 * 1024, gt=0)
    default_workspace: str = "default"
    log_level: str = "INFO"
    http: HttpSettings = HttpSettings()
    ingest: IngestSettings = IngestSettings()
    outbox: OutboxSettings = OutboxSettings()
    # Automation rules loaded at start (replacing the config rules loaded before); read-only in the API.
    rules: list[ConfigRule] = Field(default_factory=list)
    _config_file: Path | None = PrivateAttr(None)

    @field_validator("redis_url", "database_url", "secret_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: command-line flags (init values), then the environment, then the file.
        return (init_settings, env_settings, InitSettingsSource(settings_cls, cls._file_values))

    _file_values: ClassVar[dict[str, Any]] = {}

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'aggregator.db').resolve()}"

    @property
    def attachments_dir(self) -> Path:
        return self.data_dir / "attachments"

    @property
    def config_file(self) -> Path | None:
        """The file these settings were read from, if any."""
        return self._config_file


def _describe(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling against config/aggregator.example.toml)"
        problems.append(f"{key}: {message} (got {error.get('input')!r})")
    return f"invalid configuration in {source}:\n  " + "\n  ".join(problems)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the config file (explicit path, $AGGREGATOR_CONFIG, or ./aggregator.toml when present).

    Precedence, highest first: `overrides` (command-line flags), AGGREGATOR_* environment, the file.
    """
    if path is None and os.environ.get("AGGREGATOR_CONFIG"):
        path = Path(os.environ["AGGREGATOR_CONFIG"])
    values: dict[str, Any] = {}
    source = "defaults and AGGREGATOR_* environment"
    if path is None and DEFAULT_CONFIG_FILE.exists():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        source = f"{path} (and AGGREGATOR_* environment)"
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    if overrides:
        source += " and command-line flags"

    class _Loaded(Settings):
        _file_values = values

    try:
        loaded = _Loaded(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    settings = Settings.model_construct(**dict(loaded))
    settings._config_file = path
    return settings
