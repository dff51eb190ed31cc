"""The `aggregator` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from aggregator.attachments import AttachmentStore
from aggregator.bus import create_bus
from aggregator.channels import ChannelManager
from aggregator.config import ConfigError, Settings, load_settings
from aggregator.daemon import Daemon, bootstrap, open_store
from aggregator.ingest import Ingestor
from aggregator.metrics import Metrics
from aggregator.model import Role, utcnow
from aggregator.secrets import SecretKeyError
from aggregator.store import Conflict, Invalid, NotFound, Store
from aggregator.store.admin import UserRecord
from aggregator.tokens import hash_token, new_token
from aggregator.workspace import SettingsCache
from channels.base import ConfigInvalid, Registry, UnknownChannelKind

EXAMPLES = """\
examples:
  aggregator serve                                  start the daemon (config: ./aggregator.toml if present)
  aggregator token create --user ada@shop.example   print a new token acting as that user, with its role
  aggregator token create --role agent              for scripts: a token of the shared 'agent token' user
  aggregator token list
  aggregator token revoke TOKEN_ID
  aggregator channel add api --name shop --set secret=... --set callback_url=https://shop.example/hook
  aggregator channel list
  aggregator channel check CHANNEL_ID
  aggregator channel add email --name support --set address=support@shop.example \
      --set imap_host=imap.shop.example --set imap_password=... --set smtp_host=smtp.shop.example
  aggregator channel import CHANNEL_ID --since 2026-01-01   import a mailbox's history (resumable)

Settings come from --config (or $AGGREGATOR_CONFIG, or ./aggregator.toml), overridden by AGGREGATOR_*
environment variables (e.g. AGGREGATOR_REDIS_URL, AGGREGATOR_HTTP__PORT). See config/aggregator.example.toml.
"""


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aggregator",
        description="Omnichannel message aggregator: one inbox for every customer channel.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="configuration file (TOML)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the daemon in the foreground (migrates the schema first)")
    serve.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default from config: 8080)")

    commands.add_parser("migrate", help="bring the database schema up to date")

    workspace = commands.add_parser("workspace", help="manage workspaces").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    workspace.add_parser("create", help="create a workspace").add_argument("name")
    workspace.add_parser("list", help="list workspaces")

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    user_create = user.add_parser("create", help="create a user; prints its id")
    user_create.add_argument("--name", required=True)
    user_create.add_argument("--email", required=True)
    user_create.add_argument("--role", choices=[r.value for r in Role], default=Role.AGENT.value)
    user_create.add_argument("--languages", default="", help="comma-separated language codes, e.g. en,de,hu")
    user_create.add_argument("--capacity", type=int, default=10, help="open conversations at once")
    user_create.add_argument("--workspace", help="workspace name (default: the default workspace)")

    token = commands.add_parser("token", help="manage API tokens").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    token_create = token.add_parser(
        "create",
        help="create an API token bound to a user; prints only the token",
        description="Create an API token that acts as a user, with that user's role (a later change of "
        "the user's role applies to its tokens). Prints only the token; it is stored hashed.",
    )
    who = token_create.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--user", metavar="EMAIL_OR_ID", help="the user the token acts as (see `aggregator user create`)"
    )
    who.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="for scripts: a token of the user named '<role> token' (email <role>-token@localhost), "
        "created with that role when missing and reused after",
    )
    token_create.add_argument("--workspace", help="workspace name (default: the default workspace)")
    token_create.add_argument("--name", default="", help="a note to recognise the token by")
    token_list = token.add_parser("list", help="list API tokens (never the tokens themselves)")
    token_list.add_argument("--workspace", help="workspace name (default: the default workspace)")
    token_list.add_argument("--all", action="store_true", help="revoked tokens too")
    token.add_parser("revoke", help="revoke an API token at once").add_argument("id", help="the token's id")

    channel = commands.add_parser("channel", help="manage channel accounts").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    channel_add = channel.add_parser("add", help="add a channel account; prints only its id")
    channel_add.add_argument("kind", help="channel kind, e.g. api")
    channel_add.add_argument("--name", required=True)
    channel_add.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key (repeat)",
    )
    channel_add.add_argument("--workspace", help="workspace name (default: the default workspace)")
    channel_list = channel.add_parser("list", help="list channel accounts with their connection state")
    channel_list.add_argument("--workspace", help="only this workspace")
    channel.add_parser("check", help="test a channel's credentials live").add_argument("id")
    channel_import = channel.add_parser(
        "import",
        help="import a mailbox's history since a date (new mail is read anyway); resumable",
        description="Store the mail received since --since that is older than the channel's starting "
        "point (connecting a mailbox takes new mail only). Run it again after an interruption: it "
        "goes on where it stopped, and mail stored already is never stored twice. The daemon may keep "
        "running meanwhile.",
    )
    channel_import.add_argument("id", help="the channel's id (see `aggregator channel list`)")
    channel_import.add_argument(
        "--since", required=True, type=_date, metavar="YYYY-MM-DD", help="first day to import"
    )
    channel_import.add_argument(
        "--folder", action="append", dest="folders", metavar="FOLDER",
        help="only this folder (repeat; default: the channel's imap_folders)",
    )
    channel_import.add_argument("--no-progress", action="store_true", help="no progress bar")
    channel.add_parser("kinds", help="list the installed channel kinds")
    return parser


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-01-31") from None


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[int]]) -> int:
    store = open_store(settings)
    try:
        await bootstrap_quietly(store, settings)
        return await work(store)
    finally:
        await store.close()


async def bootstrap_quietly(store: Store, settings: Settings) -> None:
    result = await bootstrap(store, settings)
    if result.admin_token is not None:
        print(
            f"created the first admin token for workspace {result.workspace.name!r} (shown once):\n"
            f"  {result.admin_token}",
            file=sys.stderr,
        )


async def _workspace_id(store: Store, settings: Settings, name: str | None) -> str:
    return (await store.get_workspace_by_name(name or settings.default_workspace)).id


def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--set {pair!r}: expected KEY=VALUE")
        values[key.strip()] = value
    return values


def _role_token_email(role: Role) -> str:
    return f"{role.value}-token@localhost"


async def _token_user(store: Store, workspace_id: str, user: str | None, role: str | None) -> UserRecord:
    """The user a new token acts as: the one named by --user, or the --role user (made when missing)."""
    if user is not None:
        found = await store.find_user(workspace_id, user)
        if found is None:
            raise CliError(
                f"--user {user!r}: no user with that email or id in this workspace "
                "(create one with `aggregator user create --name N --email E --role R`)"
            )
    else:
        assert role is not None
        wanted = Role(role)
        email = _role_token_email(wanted)
        found = await store.find_user(workspace_id, email)
        if found is None:
            user_id = await store.create_user(workspace_id, f"{wanted.value} token", email, wanted)
            found = await store.get_user(workspace_id, user_id)
        elif found.role is not wanted:
            raise CliError(
                f"--role {wanted.value}: its user {email} has the {found.role.value} role now; "
                "name a user with --user instead"
            )
    if found.deactivated_at is not None:
        raise CliError(f"user {found.email} is deactivated: name an active user with --user")
    return found


async def _token_list(store: Store, workspace_id: str, include_revoked: bool) -> None:
    after = None
    shown = 0
    while True:
        page = await store.list_tokens(workspace_id, include_revoked=include_revoked, limit=100, after=after)
        for token in page.items:
            shown += 1
            user = token.user_email or "(no user)"
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            revoked = f"  revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else ""
            print(
                f"{token.id}  {token.role.value:<6} {user:<30} {token.name!r}  "
                f"created {token.created_at:%Y-%m-%d %H:%M}  last used {used}{revoked}"
            )
        if page.next_cursor is None:
            break
        after = page.next_cursor
    if not shown:
        print("no tokens: create one with `aggregator token create --user EMAIL`")


async def _serve(settings: Settings) -> int:
    daemon = Daemon(settings)

    def announce(d: Daemon) -> None:
        if d.bootstrap is not None and d.bootstrap.admin_token is not None:
            print(
                f"\nFirst admin token for workspace {d.bootstrap.workspace.name!r} (shown once, keep it):\n"
                f"  {d.bootstrap.admin_token}\n",
                flush=True,
            )
        bus = "Redis" if settings.redis_url else "in-process (no Redis)"
        print(
            f"aggregator serving on http://{settings.http.host}:{d.port}  "
            f"(data: {settings.data_dir.resolve()}, bus: {bus}); Ctrl-C stops it",
            flush=True,
        )

    try:
        await daemon.serve(announce)
    except OSError as exc:
        where = f"{settings.http.host}:{settings.http.port}"
        raise CliError(
            f"cannot listen on {where}: {exc.strerror or exc} "
            "(is another aggregator running? choose another port with --port or AGGREGATOR_HTTP__PORT)"
        ) from exc
    return 0


async def _channel_check(settings: Settings, channel_id: str) -> int:
    async def work(store: Store) -> int:
        account = await store.get_channel_account(channel_id)
        bus = create_bus(None)
        async with aiohttp.ClientSession() as http:

            async def no_sink(_: Any) -> Any:
                raise RuntimeError("channel check does not receive messages")

            manager = ChannelManager(
                store,
                bus,
                Registry(),
                no_sink,
                http,
                clock=utcnow,
                node_id="cli",
                max_body_bytes=settings.http.max_body_bytes,
                max_attachment_bytes=settings.max_attachment_bytes,
            )
            result = await manager.build(account).check()
        print(f"{'ok' if result.ok else 'FAILED'}: {account.kind} channel {account.name!r}: {result.detail}")
        return 0 if result.ok else 1

    return await _with_store(settings, work)


async def _channel_import(
    settings: Settings, channel_id: str, since: date, folders: Sequence[str] | None, show: bool
) -> int:
    store = open_store(settings)
    bus = create_bus(settings.redis_url)
    metrics = Metrics()
    attachments = AttachmentStore(settings.attachments_dir, settings.max_attachment_bytes)
    # Imported history gets its languages detected too; it gets no automatic replies (no AutoReplier).
    ingestor = Ingestor(
        store,
        bus,
        attachments,
        metrics,
        max_batch=settings.ingest.max_batch,
        settings=SettingsCache(store.workspace_settings),
    )
    try:
        await bootstrap_quietly(store, settings)
        account = await store.get_channel_account(channel_id)
        await store.start_writer()
        await bus.start()
        await ingestor.start()
        async with aiohttp.ClientSession() as http:
            manager = ChannelManager(
                store,
                bus,
                Registry(),
                ingestor,
                http,
                clock=utcnow,
                node_id="cli-import",
                max_body_bytes=settings.http.max_body_bytes,
                max_attachment_bytes=settings.max_attachment_bytes,
            )
            adapter = manager.build(account)
            importer = getattr(adapter, "import_history", None)
            if importer is None:
                raise CliError(f"the {account.kind} channel {account.name!r} has no history to import")
            bars: dict[str, tqdm[Any]] = {}

            def progress(folder: str, done: int, total: int) -> None:
                if not show:
                    return
                bar = bars.get(folder)
                if bar is None:
                    bar = bars[folder] = tqdm(total=total, desc=folder, unit="mail", file=sys.stderr)
                bar.update(done - bar.n)

            try:
                reports = await importer(since, progress, folders)
            except Exception as exc:
                for bar in bars.values():
                    bar.close()
                name = type(exc).__name__
                if name in ("ImapAuthError", "ImapTransientError", "ImapError"):
                    print(
                        f"aggregator: import stopped: {exc}\n"
                        f"what is stored stays stored; run the same command again to go on",
                        file=sys.stderr,
                    )
                    return 1
                raise
            for bar in bars.values():
                bar.close()
        for report in reports:
            print(
                f"{report.folder}: {report.found} mails since {since.isoformat()}, "
                f"{report.stored} stored, {report.already} stored before"
            )
        return 0
    finally:
        await ingestor.stop()
        await bus.close()
        await store.close()


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    action = getattr(args, "action", None)
    if command == "serve":
        return await _serve(settings)
    if command == "migrate":
        store = open_store(settings)
        try:
            before, after = await store.migrate()
        finally:
            await store.close()
        print(
            f"schema at {after} (was {before or 'empty'})"
            if before != after
            else f"schema up to date ({after})"
        )
        return 0
    if command == "channel" and action == "check":
        return await _channel_check(settings, args.id)
    if command == "channel" and action == "import":
        return await _channel_import(settings, args.id, args.since, args.folders, not args.no_progress)

    async def work(store: Store) -> int:
        if command == "workspace" and action == "create":
            print((await store.create_workspace(args.name)).id)
        elif command == "workspace" and action == "list":
            for workspace in await store.list_workspaces():
                print(f"{workspace.id}  {workspace.name}")
        elif command == "user" and action == "create":
            languages = [code.strip() for code in args.languages.split(",") if code.strip()]
            workspace_id = await _workspace_id(store, settings, args.workspace)
            print(
                await store.create_user(
                    workspace_id, args.name, args.email, Role(args.role), languages, args.capacity
                )
            )
        elif command == "token" and action == "create":
            workspace_id = await _workspace_id(store, settings, args.workspace)
            user = await _token_user(store, workspace_id, args.user, args.role)
            token = new_token()
            await store.create_user_token(workspace_id, user.id, args.name, hash_token(token))
            print(token)
        elif command == "token" and action == "list":
            await _token_list(store, await _workspace_id(store, settings, args.workspace), args.all)
        elif command == "token" and action == "revoke":
            workspace_id = await store.token_workspace(args.id)
            if await store.revoke_token(workspace_id, args.id, utcnow()):
                print(f"revoked token {args.id}")
            else:
                print(f"token {args.id} was revoked already")
        elif command == "channel" and action == "add":
            registry = Registry()
            config = registry.parse_config(args.kind, _parse_sets(args.settings))
            plain, secret = config.split_secrets()
            workspace_id = await _workspace_id(store, settings, args.workspace)
            print(await store.create_channel_account(workspace_id, args.kind, args.name, plain, secret))
        elif command == "channel" and action == "list":
            only: str | None = (
                await _workspace_id(store, settings, args.workspace) if args.workspace else None
            )
            names = {w.id: w.name for w in await store.list_workspaces()}
            accounts = await store.list_channel_accounts(only)
            if not accounts:
                print(
                    "no channels yet: add one with `aggregator channel add KIND --name NAME --set key=value`"
                )
            for account in accounts:
                detail = f" ({account.state_detail})" if account.state_detail else ""
                print(
                    f"{account.id}  {account.kind:<10} {account.name:<24} "
                    f"workspace={names.get(account.workspace_id, '?')}  {account.state}{detail}"
                )
        elif command == "channel" and action == "kinds":
            for kind, adapter in sorted(Registry().adapters.items()):
                print(f"{kind:<12} {adapter.__module__}.{adapter.__qualname__}")
        else:
            raise CliError(f"unknown command {command} {action or ''}".strip())
        return 0

    return await _with_store(settings, work)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {}
        if args.command == "serve" and (args.host or args.port is not None):
            http: dict[str, Any] = {}
            if args.host:
                http["host"] = args.host
            if args.port is not None:
                http["port"] = args.port
            overrides["http"] = http
        settings = load_settings(args.config, **overrides)
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        logging.getLogger("alembic").setLevel(logging.WARNING)
        return asyncio.run(_run(args, settings))
    except (
        ConfigError,
        CliError,
        ConfigInvalid,
        UnknownChannelKind,
        NotFound,
        Conflict,
        Invalid,
        SecretKeyError,
    ) as exc:
        print(f"aggregator: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
