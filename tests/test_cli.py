"""The `aggregator` command, run in-process against a config file whose data directory is tmp_path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.config import load_settings
from aggregator.daemon import open_store
from aggregator.model import Role
from aggregator.store import TokenInfo
from support.app import clear_aggregator_environment, closed_port

SHOP_SECRET = "cli-secret-do-not-leak-0123456789"


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str


Cli = Callable[..., Run]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_aggregator_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "aggregator.test.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\nlog_level = "WARNING"\n', encoding="utf-8")
    return path


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*args: str) -> Run:
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def authenticate(config: Path, token: str) -> tuple[TokenInfo | None, dict[str, str]]:
    """The token's record and the workspaces by id, read with the daemon's own store."""

    async def read() -> tuple[TokenInfo | None, dict[str, str]]:
        store = open_store(load_settings(config))
        try:
            return await store.authenticate(token), {w.id: w.name for w in await store.list_workspaces()}
        finally:
            await store.close()

    return asyncio.run(read())


def only_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_token_create_prints_only_a_token_that_authenticates(cli: Cli, config: Path) -> None:
    run = cli("token", "create", "--role", "agent")

    assert run.code == 0
    token = only_line(run.out)
    assert token.startswith("agg_") and " " not in token
    assert "first admin token" in run.err  # the first run also bootstraps an admin token, on stderr
    info, workspaces = authenticate(config, token)
    assert info is not None
    assert info.role is Role.AGENT
    assert workspaces[info.workspace_id] == "default"

    second = cli("token", "create", "--role", "admin")
    assert second.err == ""  # the admin token is made once
    assert only_line(second.out) != token


def user_of(config: Path, token: str) -> tuple[str | None, Role | None]:
    info, _ = authenticate(config, token)
    return (info.user_id, info.role) if info is not None else (None, None)


def test_token_create_for_a_user_acts_as_that_user_with_its_role(cli: Cli, config: Path) -> None:
    user_id = only_line(
        cli("user", "create", "--name", "Sam", "--email", "sam@shop.example", "--role", "seller").out
    )

    by_email = cli("token", "create", "--user", "sam@shop.example", "--name", "reports")
    by_id = cli("token", "create", "--user", user_id)

    assert (by_email.code, by_id.code) == (0, 0)
    assert user_of(config, only_line(by_email.out)) == (user_id, Role.SELLER)
    assert user_of(config, only_line(by_id.out)) == (user_id, Role.SELLER)


def test_token_create_with_a_role_binds_it_to_one_user_per_role(cli: Cli, config: Path) -> None:
    first = user_of(config, only_line(cli("token", "create", "--role", "agent").out))
    second = user_of(config, only_line(cli("token", "create", "--role", "agent").out))
    admin = user_of(config, only_line(cli("token", "create", "--role", "admin").out))

    assert first[0] is not None and first == second and first[1] is Role.AGENT
    assert admin[0] not in (None, first[0]) and admin[1] is Role.ADMIN


def test_token_create_needs_a_known_user_or_a_role(cli: Cli) -> None:
    unknown = cli("token", "create", "--user", "nobody@shop.example")
    assert unknown.code == 2 and unknown.out == ""
    assert "nobody@shop.example" in unknown.err and "user create" in unknown.err
    with pytest.raises(SystemExit) as neither:
        cli("token", "create")
    assert neither.value.code == 2
    with pytest.raises(SystemExit) as both:
        cli("token", "create", "--user", "x@y", "--role", "agent")
    assert both.value.code == 2


def test_token_list_and_revoke(cli: Cli, config: Path) -> None:
    token = only_line(cli("token", "create", "--role", "agent", "--name", "nightly export").out)
    listed = cli("token", "list")
    assert listed.code == 0
    [line] = [line for line in listed.out.splitlines() if "nightly export" in line]
    token_id = line.split()[0]
    assert " agent " in line and "agent-token@localhost" in line and "last used never" in line
    assert token not in listed.out

    revoked = cli("token", "revoke", token_id)
    assert (revoked.code, revoked.out.strip()) == (0, f"revoked token {token_id}")
    assert authenticate(config, token)[0] is None
    assert token_id not in cli("token", "list").out
    [line] = [line for line in cli("token", "list", "--all").out.splitlines() if token_id in line]
    assert "revoked " in line
    assert "revoked already" in cli("token", "revoke", token_id).out

    missing = cli("token", "revoke", "no-such-token")
    assert missing.code == 2 and "no-such-token" in missing.err


def test_channel_add_prints_only_an_id_and_list_shows_it(cli: Cli) -> None:
    added = cli(
        "channel", "add", "api", "--name", "shop", "--set", f"secret={SHOP_SECRET}",
        "--set", "callback_url=https://shop.example/hook",
    )  # fmt: skip

    assert added.code == 0, added.err
    channel_id = only_line(added.out)
    assert channel_id.isalnum()

    listed = cli("channel", "list")
    assert listed.code == 0
    [line] = [line for line in listed.out.splitlines() if channel_id in line]
    assert " api " in line and " shop " in line and "workspace=default" in line
    assert SHOP_SECRET not in listed.out


def test_secret_is_not_stored_in_clear_text(cli: Cli, tmp_path: Path) -> None:
    added = cli(
        "channel", "add", "api", "--name", "shop", "--set", f"secret={SHOP_SECRET}",
        "--set", "callback_url=https://shop.example/hook",
    )  # fmt: skip
    assert added.code == 0, added.err

    database = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("aggregator.db*"))
    assert b"shop.example/hook" in database  # the plain settings are there, so this is the right file
    assert SHOP_SECRET.encode() not in database


def test_bad_channel_config_exits_2_naming_the_field(cli: Cli) -> None:
    run = cli("channel", "add", "api", "--name", "shop", "--set", "secret=short")
    assert run.code == 2
    assert run.out == ""
    assert "secret" in run.err
    assert "Traceback" not in run.err

    unknown = cli(
        "channel", "add", "api", "--name", "shop", "--set", f"secret={SHOP_SECRET}", "--set", "colour=red"
    )
    assert unknown.code == 2
    assert "colour: unknown setting" in unknown.err

    malformed = cli("channel", "add", "api", "--name", "shop", "--set", "secret")
    assert malformed.code == 2
    assert "KEY=VALUE" in malformed.err


def test_unknown_channel_kind_exits_2_listing_the_known_kinds(cli: Cli) -> None:
    run = cli("channel", "add", "carrier-pigeon", "--name", "coo", "--set", "x=y")
    assert run.code == 2
    assert "carrier-pigeon" in run.err
    assert "known: " in run.err and "api" in run.err


def test_duplicate_channel_name_exits_2(cli: Cli) -> None:
    assert cli("channel", "add", "api", "--name", "shop", "--set", f"secret={SHOP_SECRET}").code == 0
    again = cli("channel", "add", "api", "--name", "shop", "--set", f"secret={SHOP_SECRET}")
    assert again.code == 2
    assert "shop" in again.err


def test_workspace_create_and_a_token_for_it(cli: Cli, config: Path) -> None:
    created = cli("workspace", "create", "acme")
    assert created.code == 0
    workspace_id = only_line(created.out)

    run = cli("token", "create", "--role", "seller", "--workspace", "acme")
    assert run.code == 0
    info, workspaces = authenticate(config, only_line(run.out))
    assert info is not None
    assert (info.workspace_id, info.role) == (workspace_id, Role.SELLER)
    assert workspaces[workspace_id] == "acme"

    listed = cli("workspace", "list")
    assert {line.split()[-1] for line in listed.out.splitlines()} == {"acme", "default"}


def test_unknown_workspace_exits_2_naming_it(cli: Cli) -> None:
    run = cli("token", "create", "--role", "agent", "--workspace", "no-such-shop")
    assert run.code == 2
    assert run.out == ""
    assert "no-such-shop" in run.err


def test_migrate_twice_is_fine(cli: Cli) -> None:
    first = cli("migrate")
    second = cli("migrate")
    assert (first.code, second.code) == (0, 0)
    assert "was empty" in first.out
    assert "up to date" in second.out


def test_channel_check_reports_an_unreachable_callback(cli: Cli) -> None:
    added = cli(
        "channel", "add", "api", "--name", "shop", "--set", f"secret={SHOP_SECRET}",
        "--set", f"callback_url=http://127.0.0.1:{closed_port()}/hook",
    )  # fmt: skip
    run = cli("channel", "check", only_line(added.out))
    assert run.code == 1
    assert run.out.startswith("FAILED: api channel 'shop'")


def test_bad_config_file_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[http]\nport = "eighty"\n', encoding="utf-8")
    assert main(["--config", str(path), "migrate"]) == 2
    err = capsys.readouterr().err
    assert "http.port" in err
    assert str(path) in err
