"""Configuration: defaults, the TOML file, AGGREGATOR_* overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import ConfigError, load_settings
from support.app import clear_aggregator_environment


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AGGREGATOR_* variable and no ./aggregator.toml from the machine running the tests."""
    clear_aggregator_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, content: str, name: str = "aggregator-test.toml") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.http.port == 8080
    assert settings.http.host == "127.0.0.1"
    assert settings.redis_url is None
    assert settings.default_workspace == "default"
    assert settings.outbox.max_attempts >= 1
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("/data/aggregator.db")


def test_values_come_from_the_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'data_dir = "/var/lib/agg"\nlog_level = "debug"\n[http]\nhost = "0.0.0.0"\nport = 8181\n'
        "[outbox]\nmax_attempts = 3\n",
    )
    settings = load_settings(path)
    assert settings.data_dir == Path("/var/lib/agg")
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 8181)
    assert settings.outbox.max_attempts == 3
    assert settings.log_level == "DEBUG"
    assert settings.outbox.backoff_base_seconds == 2.0  # unset keys keep their defaults


def test_aggregator_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    write(tmp_path, "[http]\nport = 8282\n", name="aggregator.toml")
    assert load_settings().http.port == 8282


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[http]\nport = 8383\n", name="elsewhere.toml")
    monkeypatch.setenv("AGGREGATOR_CONFIG", str(path))
    assert load_settings().http.port == 8383


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'redis_url = "redis://file:6379/0"\n[http]\nhost = "0.0.0.0"\nport = 8181\n')
    monkeypatch.setenv("AGGREGATOR_HTTP__PORT", "9999")
    monkeypatch.setenv("AGGREGATOR_REDIS_URL", "redis://env:6379/1")

    settings = load_settings(path)

    assert settings.http.port == 9999
    assert settings.http.host == "0.0.0.0"  # the file's other [http] keys stay
    assert settings.redis_url == "redis://env:6379/1"


def test_empty_redis_url_in_the_environment_means_no_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'redis_url = "redis://file:6379/0"\n')
    monkeypatch.setenv("AGGREGATOR_REDIS_URL", "")
    assert load_settings(path).redis_url is None


def test_explicit_overrides_merge_into_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[http]\nhost = "0.0.0.0"\nport = 8181\n')
    settings = load_settings(path, http={"port": 9000})
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 9000)


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 70000\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert "http.port" in str(raised.value)
    assert "70000" in str(raised.value)
    assert str(path) in str(raised.value)


def test_bad_value_from_the_environment_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGGREGATOR_HTTP__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"http\.port"):
        load_settings()


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'colour = "blue"\n[outbox]\nmax_atempts = 3\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert "colour: unknown setting" in message
    assert "outbox.max_atempts: unknown setting" in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http\nport = 1\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(path) in str(raised.value)
    assert "not valid TOML" in str(raised.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_log_level_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(write(tmp_path, 'log_level = "chatty"\n'))
