"""Language detection on the inbound path: the message's, the conversation's and the contact's language.

Through a running daemon (its ingest pipeline has the workspace settings and so detection) and its API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from aggregator.daemon import Daemon
from aggregator.model import MessageFlags, Role, ThreadHints, new_id
from aggregator.store.ingest_batch import PreparedInbound
from support.api import ApiClient, user_with_token
from support.app import SECRET, add_channel, daemon_url, inbound, sql

pytestmark = pytest.mark.timeout(60)

GERMAN = (
    "Guten Tag, ich habe vor zwei Wochen eine Kaffeemaschine bei Ihnen bestellt und sie ist immer noch "
    "nicht angekommen. Können Sie mir bitte sagen, wo mein Paket gerade ist und wann es kommt?"
)
ENGLISH = (
    "Hello, I ordered a coffee machine from you two weeks ago and it still has not arrived. Could you "
    "please tell me where my parcel is right now and when it will be delivered to my address?"
)
ITALIAN = (
    "Buongiorno, ho ordinato una macchina da caffè da voi due settimane fa e non è ancora arrivata. "
    "Potete dirmi dove si trova il mio pacco e quando verrà consegnato al mio indirizzo?"
)


@dataclass
class Setup:
    daemon: Daemon
    workspace_id: str
    channel_id: str
    api: ApiClient


@pytest.fixture
async def setup(daemon: Daemon, http_session: aiohttp.ClientSession) -> AsyncIterator[Setup]:
    assert daemon.bootstrap is not None
    workspace_id = daemon.bootstrap.workspace.id
    channel_id = await add_channel(daemon.store, workspace_id, {"secret": SECRET})
    _, token = await user_with_token(daemon.store, workspace_id, Role.ADMIN)
    yield Setup(daemon, workspace_id, channel_id, ApiClient(http_session, daemon_url(daemon), token))


async def conversation(s: Setup, conversation_id: str) -> tuple[str | None, str | None]:
    row = (
        await sql(
            s.daemon.store,
            "SELECT language, language_source FROM conversations WHERE id = :id",
            id=conversation_id,
        )
    )[0]
    return row.language, row.language_source


async def message_language(s: Setup, message_id: str) -> str | None:
    return (await sql(s.daemon.store, "SELECT language FROM messages WHERE id = :id", id=message_id))[
        0
    ].language


async def contact_language(s: Setup, conversation_id: str) -> str | None:
    rows = await sql(
        s.daemon.store,
        "SELECT co.language FROM contacts co JOIN conversations c ON c.contact_id = co.id WHERE c.id = :id",
        id=conversation_id,
    )
    return rows[0].language


async def test_a_long_message_sets_message_conversation_and_contact_language(setup: Setup) -> None:
    result = await setup.daemon.ingestor(inbound(setup.channel_id, "m1", sender="anna", text_body=GERMAN))
    assert await message_language(setup, result.message_id) == "de"
    assert await conversation(setup, result.conversation_id) == ("de", "detected")
    assert await contact_language(setup, result.conversation_id) == "de"
    answer = await setup.api.get(f"/conversations/{result.conversation_id}")
    assert (answer.body["language"], answer.body["language_source"]) == ("de", "detected")


async def test_a_short_text_takes_the_channel_hint(setup: Setup) -> None:
    result = await setup.daemon.ingestor(
        inbound(setup.channel_id, "m1", sender="jean", text_body="ok merci", language_hint="fr-CA")
    )
    assert await conversation(setup, result.conversation_id) == ("fr", "hint")


async def test_a_hint_outside_the_workspace_languages_is_kept_when_nothing_is_detected(setup: Setup) -> None:
    result = await setup.daemon.ingestor(
        inbound(setup.channel_id, "m1", sender="ivan", text_body="👍", language_hint="ru")
    )
    assert await conversation(setup, result.conversation_id) == ("ru", "hint")


async def test_a_short_text_without_hint_takes_the_contacts_earlier_language(setup: Setup) -> None:
    first = await setup.daemon.ingestor(inbound(setup.channel_id, "m1", sender="anna", text_body=GERMAN))
    # A new conversation (subject threading keeps them apart) with a text too short to tell.
    await setup.api.patch(f"/conversations/{first.conversation_id}", {"status": "resolved"})
    second = await setup.daemon.ingestor(
        inbound(
            setup.channel_id,
            "m2",
            sender="anna",
            text_body="ok",
            thread=ThreadHints(by_contact=False),
        )
    )
    assert second.conversation_id != first.conversation_id
    assert await message_language(setup, second.message_id) is None
    assert await conversation(setup, second.conversation_id) == ("de", "contact")


async def test_a_strong_detection_changes_the_conversation_a_short_one_does_not(setup: Setup) -> None:
    first = await setup.daemon.ingestor(inbound(setup.channel_id, "m1", sender="kim", text_body=GERMAN))
    short = await setup.daemon.ingestor(inbound(setup.channel_id, "m2", sender="kim", text_body="Thanks!"))
    assert short.conversation_id == first.conversation_id
    assert await conversation(setup, first.conversation_id) == ("de", "detected")
    await setup.daemon.ingestor(inbound(setup.channel_id, "m3", sender="kim", text_body=ENGLISH))
    assert await conversation(setup, first.conversation_id) == ("en", "detected")
    # The contact keeps the language it first had: detection only fills it in.
    assert await contact_language(setup, first.conversation_id) == "de"


async def test_an_agents_choice_is_never_overwritten_until_handed_back(setup: Setup) -> None:
    first = await setup.daemon.ingestor(inbound(setup.channel_id, "m1", sender="lea", text_body=GERMAN))
    cid = first.conversation_id
    answer = await setup.api.patch(f"/conversations/{cid}", {"language": "fr"})
    assert answer.status == 200, answer.body
    assert (answer.body["language"], answer.body["language_source"]) == ("fr", "agent")
    again = await setup.daemon.ingestor(
        inbound(setup.channel_id, "m2", sender="lea", text_body=GERMAN + " Danke.")
    )
    assert again.conversation_id == cid
    assert await message_language(setup, again.message_id) == "de"
    assert await conversation(setup, cid) == ("fr", "agent")
    # null hands it back to detection: the language stays until the next customer message says otherwise.
    answer = await setup.api.patch(f"/conversations/{cid}", {"language": None})
    assert (answer.body["language"], answer.body["language_source"]) == ("fr", None)
    await setup.daemon.ingestor(inbound(setup.channel_id, "m3", sender="lea", text_body=ITALIAN))
    assert await conversation(setup, cid) == ("it", "detected")
    bad = await setup.api.patch(f"/conversations/{cid}", {"language": "not a tag"})
    assert bad.status == 400 and bad.body["error"]["field"] == "language"


async def test_only_the_new_part_of_an_email_counts(setup: Setup) -> None:
    # The parser's reply part is German; the rest of the text is the quoted English history.
    quoted = f"Ja.\n\nOn Monday, Shop wrote:\n> {ENGLISH}\n> {ENGLISH}"
    result = await setup.daemon.ingestor(
        inbound(setup.channel_id, "m1", sender="otto", text_body=quoted, reply_text=GERMAN)
    )
    assert await message_language(setup, result.message_id) == "de"
    # Without a reply part, the whole text is looked at.
    whole = await setup.daemon.ingestor(inbound(setup.channel_id, "m2", sender="paul", text_body=quoted))
    assert await message_language(setup, whole.message_id) == "en"


async def test_automatic_mail_does_not_change_the_conversations_language(setup: Setup) -> None:
    first = await setup.daemon.ingestor(inbound(setup.channel_id, "m1", sender="rita", text_body=GERMAN))
    await setup.daemon.ingestor(
        inbound(
            setup.channel_id,
            "m2",
            sender="rita",
            text_body=ENGLISH,
            flags=MessageFlags(auto_submitted=True),
        )
    )
    assert await conversation(setup, first.conversation_id) == ("de", "detected")


async def test_detection_chooses_among_the_workspaces_languages_only(setup: Setup) -> None:
    answer = await setup.api.patch("/workspace", {"languages": ["en", "de"]})
    assert answer.status == 200, answer.body
    assert answer.body["settings"]["languages"] == ["en", "de"]
    detector = await setup.daemon.workspace_settings.detector(setup.workspace_id)
    assert sorted(detector.languages) == ["de", "en"]
    result = await setup.daemon.ingestor(inbound(setup.channel_id, "m1", sender="ugo", text_body=ITALIAN))
    assert await message_language(setup, result.message_id) in (None, "en", "de")
    bad = await setup.api.patch("/workspace", {"languages": ["en", "klingon"]})
    assert bad.status == 400
    assert "klingon" in bad.body["error"]["message"]


async def test_without_settings_the_hint_is_the_language(setup: Setup) -> None:
    """The store on its own (no pipeline, no detection) keeps the channel's hint as before."""
    message = inbound(setup.channel_id, new_id(), sender="vera", text_body=GERMAN, language_hint="nl")
    prepared = PreparedInbound(message, setup.workspace_id)
    assert (prepared.language, prepared.language_source) == ("nl", "hint")
