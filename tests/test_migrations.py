"""Schema migrations: the migrated schema is the one the code declares, and upgrading keeps the data."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, text

from aggregator.store import schema
from aggregator.store.engine import alembic_config


def _upgrade(url: str, revision: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    engine.dispose()


def test_the_migrated_schema_matches_the_declared_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _upgrade(url, "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    engine.dispose()
    # The FTS5 table is created by hand (SQLAlchemy has no type for it) and is not in the metadata.
    diff = [d for d in diff if not (d[0] == "remove_table" and d[1].name.startswith("search_index"))]
    # messages.extra is JSON text either way (JSONText only skips re-encoding); SQLite stores both as TEXT.
    diff = [d for d in diff if not (isinstance(d, list) and d[0][0] == "modify_type" and d[0][3] == "extra")]
    assert diff == []


def test_upgrading_from_0001_fills_counts_previews_and_binds_tokens_to_users(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _upgrade(url, "0001")
    engine = create_engine(url)
    now = "2026-01-01T00:00:00.000000Z"
    later = "2026-01-01T00:00:01.000000Z"
    with engine.begin() as conn:
        run = conn.execute
        run(text(f"INSERT INTO workspaces VALUES ('w', 'shop', 'en', '{{}}', '{now}')"))
        run(text(f"INSERT INTO api_tokens (id, workspace_id, role, name, token_hash, created_at) "
                 f"VALUES ('t', 'w', 'admin', 'first admin token', 'h', '{now}')"))
        run(text(f"INSERT INTO channel_accounts (id, workspace_id, kind, name, config, created_at, updated_at) "
                 f"VALUES ('ch', 'w', 'api', 'shop', '{{}}', '{now}', '{now}')"))
        run(text(f"INSERT INTO contacts (id, workspace_id, attributes, created_at, updated_at) "
                 f"VALUES ('co', 'w', '{{}}', '{now}', '{now}')"))
        run(text(f"INSERT INTO identities (id, workspace_id, contact_id, kind, address, created_at) "
                 f"VALUES ('i', 'w', 'co', 'api', 'x', '{now}')"))
        run(text(f"INSERT INTO conversations (id, workspace_id, channel_account_id, contact_id, identity_id, "
                 f"status, labels, last_activity_at, created_at, updated_at) "
                 f"VALUES ('cv', 'w', 'ch', 'co', 'i', 'open', '[]', '{later}', '{now}', '{later}')"))
        for mid, direction, kind, body, at in [
            ("m1", "in", "message", "first question", now),
            ("m2", "out", "note", "internal", later),
            ("m3", "out", "message", "our answer", later),
        ]:
            run(text(f"INSERT INTO messages (id, workspace_id, conversation_id, channel_account_id, direction, "
                     f"kind, text, flags, extra, created_at) VALUES ('{mid}', 'w', 'cv', 'ch', '{direction}', "
                     f"'{kind}', '{body}', '[]', '{{}}', '{at}')"))
    engine.dispose()
    _upgrade(url, "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        conv = conn.execute(text("SELECT message_count, inbound_count, last_message_preview, "
                                 "last_message_direction FROM conversations")).one()
        token = conn.execute(text("SELECT user_id, role FROM api_tokens")).one()
        user = conn.execute(text("SELECT role, name FROM users WHERE id = :id"), {"id": token.user_id}).one()
    engine.dispose()
    assert tuple(conv) == (2, 1, "our answer", "out")
    assert token.user_id is not None
    assert tuple(user) == ("admin", "first admin token")


def test_0008_adds_who_set_the_availability_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _upgrade(url, "0007")
    engine = create_engine(url)
    now = "2026-01-01T00:00:00.000000Z"
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO workspaces VALUES ('w', 'shop', 'en', '{{}}', '{now}')"))
        conn.execute(
            text(
                f"INSERT INTO users (id, workspace_id, name, email, role, languages, availability, "
                f"availability_at, created_at) VALUES ('u', 'w', 'Anna', 'a@example.com', 'agent', "
                f"'[]', 'online', '{now}', '{now}')"
            )
        )
    engine.dispose()
    _upgrade(url, "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        # An online from before is taken as set by hand: it never expires.
        row = conn.execute(text("SELECT availability, availability_by FROM users")).one()
    engine.dispose()
    assert tuple(row) == ("online", None)

    engine = create_engine(url)
    _downgrade(engine, "0007")
    with engine.connect() as conn:
        columns = {r[1] for r in conn.execute(text("PRAGMA table_info(users)"))}
        count = conn.execute(text("SELECT count(*) FROM users")).scalar_one()
    engine.dispose()
    assert "availability_by" not in columns and "availability" in columns
    assert count == 1


def test_0009_adds_who_handed_a_conversation_back_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _upgrade(url, "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        columns = {r[1] for r in conn.execute(text("PRAGMA table_info(conversations)"))}
    assert "handed_back_by" in columns
    _downgrade(engine, "0008")
    with engine.connect() as conn:
        columns = {r[1] for r in conn.execute(text("PRAGMA table_info(conversations)"))}
    engine.dispose()
    assert "handed_back_by" not in columns and "assigned_by" in columns


def _downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
