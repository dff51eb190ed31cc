"""config/aggregator.example.toml documents every setting, at its default, and cannot drift silently."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from aggregator.config import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "aggregator.example.toml"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def setting_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf setting of `model` as a key path, descending into nested models ([http] ...)."""
    for name, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is None:
            yield (*prefix, name)
        else:
            yield from setting_paths(nested, (*prefix, name))


def file_paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from file_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def env_name(path: tuple[str, ...]) -> str:
    return "AGGREGATOR_" + "__".join(part.upper() for part in path)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """AGGREGATOR_* variables of the developer's shell must not leak into the comparison."""
    for name in list(os.environ):
        if name.upper().startswith("AGGREGATOR_"):
            monkeypatch.delenv(name)


def test_example_parses_to_the_defaults() -> None:
    # Compared as dicts so that a failure names the setting whose value drifted.
    assert load_settings(EXAMPLE).model_dump() == Settings().model_dump()


def test_every_setting_is_in_the_example() -> None:
    in_file = set(file_paths(tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))))
    missing = [".".join(path) for path in setting_paths(Settings) if path not in in_file]
    assert not missing, f"settings missing from {EXAMPLE.name} (add each with a comment): {missing}"


def test_example_has_no_unknown_keys() -> None:
    # Nested sections ignore unknown keys, so a misspelt key there would otherwise go unnoticed.
    known = set(setting_paths(Settings))
    in_file = file_paths(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")))
    unknown = [".".join(path) for path in in_file if path not in known]
    assert not unknown, f"{EXAMPLE.name} has keys that are not settings: {unknown}"


def test_every_setting_names_its_environment_variable() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [env_name(path) for path in setting_paths(Settings) if env_name(path) not in text]
    assert not missing, f"{EXAMPLE.name} does not mention: {missing}"


def test_the_environment_variables_named_in_the_example_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGGREGATOR_LOG_LEVEL", "debug")
    monkeypatch.setenv("AGGREGATOR_HTTP__PORT", "9123")
    settings = load_settings(EXAMPLE)
    assert (settings.log_level, settings.http.port, settings.http.host) == ("DEBUG", 9123, "127.0.0.1")
