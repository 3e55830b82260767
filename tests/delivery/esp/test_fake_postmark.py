"""``recocamp fake-esp`` is Postmark as far as Postmark's own Python client can tell.

Each test drives a real server on loopback with ``postmarker`` (the client Postmark's docs
list for Python): ``recocamp fake-esp --token …`` started as a subprocess, and for the date
filters the same app under uvicorn in a thread with an injected clock. The expected
answers are Postmark's documented ones (API reference: Email, Messages, Bounce and Server
APIs, the overview's error codes) and, for the shapes, responses recorded from Postmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from recocamp.delivery.esp.fake_server import FakeEsp, create_app, running
from tests.delivery.esp import fake_process

TOKEN = "fake-server-token"
FROM = "Shop <shop@example.org>"
KEY = "X-Recocamp-Send-Key"
CONTROL = {"X-Postmark-Server-Token": TOKEN}  # --token closes the control routes too


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``recocamp fake-esp`` as its own process, as a user starts it."""
    process, url = fake_process.start(TOKEN)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def url(server: str) -> str:
    httpx.delete(f"{server}/_messages", headers=CONTROL).raise_for_status()
    return server


@pytest.fixture
def postmark(url: str) -> PostmarkClient:
    return PostmarkClient(server_token=TOKEN, root_api_url=f"{url}/")


def stats(url: str) -> dict[str, int]:
    answer: dict[str, int] = httpx.get(f"{url}/_stats", headers=CONTROL).json()
    return answer


def message(to: str, n: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "From": FROM,
        "To": to,
        "Subject": f"Hello {n}",
        "TextBody": f"text {n}",
        "HtmlBody": f"<p>html {n}</p>",
        **fields,
    }


# --- sending -------------------------------------------------------------------------------


def test_single_send_answers_like_postmark_and_the_message_reads_back(
    postmark: PostmarkClient, url: str
) -> None:
    sent = postmark.emails.send(
        From=FROM,
        To="anna@example.test",
        Subject="Your basket",
        TextBody="plain",
        HtmlBody="<b>html</b>",
        Tag="winback",
        Metadata={"send_key": "winback/c1/2026-01-15"},
        Headers={KEY: "winback/c1/2026-01-15"},
        MessageStream="broadcast",
    )
    assert sent["ErrorCode"] == 0 and sent["Message"] == "OK"
    assert sent["To"] == "anna@example.test"
    assert datetime.fromisoformat(sent["SubmittedAt"]).utcoffset() is not None

    details = postmark.messages.outbound.get(sent["MessageID"])
    assert str(details) == "Sent message to anna@example.test"
    assert (details.Subject, details.TextBody, details.HtmlBody, details.Tag) == (
        "Your basket",
        "plain",
        "<b>html</b>",
        "winback",
    )
    assert details.To == [{"Email": "anna@example.test", "Name": ""}]
    assert details.Metadata == {"send_key": "winback/c1/2026-01-15"}
    assert details.MessageStream == "broadcast" and details.MessageEvents == []

    dump = postmark.messages.outbound.get_dump(sent["MessageID"])
    assert dump == details.Body
    assert "Subject: Your basket" in dump and f"{KEY}: winback/c1/2026-01-15" in dump
    assert "<b>html</b>" in dump and "plain" in dump
    assert stats(url) == {
        "received": 1,
        "unique_send_keys": 1,
        "duplicates": 0,
        "without_send_key": 0,
    }


def test_a_batch_of_501_is_split_by_the_client_and_every_message_is_stored(
    postmark: PostmarkClient, url: str
) -> None:
    emails = [message(f"c{n}@example.test", n, Metadata={"send_key": f"k{n}"}) for n in range(501)]
    answers = postmark.emails.send_batch(*emails)
    assert len(answers) == 501 and {a["ErrorCode"] for a in answers} == {0}
    assert [a["To"] for a in answers] == [f"c{n}@example.test" for n in range(501)]
    assert len({a["MessageID"] for a in answers}) == 501
    assert stats(url) == {
        "received": 501,
        "unique_send_keys": 501,
        "duplicates": 0,
        "without_send_key": 0,
    }


def test_more_than_500_in_one_request_is_error_410_and_nothing_is_stored(url: str) -> None:
    body = [message(f"c{n}@example.test", n) for n in range(501)]
    reply = httpx.post(f"{url}/email/batch", json=body, headers={"X-Postmark-Server-Token": TOKEN})
    assert reply.status_code == 422 and reply.json()["ErrorCode"] == 410
    assert stats(url)["received"] == 0


def test_comma_separated_recipients_are_one_message_to_each_of_them(
    postmark: PostmarkClient,
) -> None:
    sent = postmark.emails.send(
        From=FROM, To="a@example.test, B <b@example.test>", Cc=["c@example.test"], TextBody="x"
    )
    details = postmark.messages.outbound.get(sent["MessageID"])
    assert details.Recipients == ["a@example.test", "b@example.test", "c@example.test"]
    assert details.To == [
        {"Email": "a@example.test", "Name": ""},
        {"Email": "b@example.test", "Name": "B"},
    ]
    plain = postmark.emails.send(From=FROM, To="a@example.test,b@example.test", TextBody="x")
    assert postmark.messages.outbound.get(plain["MessageID"]).Recipients == [
        "a@example.test",
        "b@example.test",
    ]


def test_plain_client_traffic_is_counted_without_send_key_not_as_duplicates(
    postmark: PostmarkClient, url: str
) -> None:
    postmark.emails.send_batch(*[message(f"c{n}@example.test", n) for n in range(3)])
    keyed = [message("k@example.test", n, Metadata={"send_key": "same"}) for n in range(2)]
    postmark.emails.send_batch(*keyed)
    assert stats(url) == {
        "received": 5,
        "unique_send_keys": 1,
        "duplicates": 1,
        "without_send_key": 3,
    }


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"From": None}, 300, "Invalid 'From' value."),
        ({"To": None}, 300, "Zero recipients specified"),
        ({"TextBody": None, "HtmlBody": None}, 300, "TextBody or HtmlBody"),
        ({"To": "not-an-address"}, 300, "Illegal email address"),
        ({"To": ",".join(f"r{n}@example.test" for n in range(51))}, 300, "50 recipients"),
        ({"Subject": "s" * 2001}, 300, "'Subject'"),
        ({"MessageStream": "newsletters"}, 1235, "does not exist"),
        ({"MessageStream": "inbound"}, 1236, "not supported"),
        ({"Headers": "notalist"}, 403, "'Headers'"),
        ({"Metadata": ["a"]}, 403, "'Metadata'"),
        ({"Metadata": {"send_key": "k" * 81}}, 300, "The 'send_key' field"),
        ({"Metadata": {"n" * 21: "v"}}, 300, "Field names are limited to 20 characters"),
        ({"To": 7}, 403, "'To'"),
    ],
)
def test_an_invalid_single_message_is_422_with_postmarks_error_code(
    postmark: PostmarkClient, url: str, fields: dict[str, Any], code: int, text: str
) -> None:
    with pytest.raises(ClientError) as refused:
        postmark.emails._send(**message("anna@example.test", **fields))
    assert refused.value.error_code == code and text in str(refused.value)
    assert "anna@example.test" not in str(refused.value)
    assert stats(url)["received"] == 0


def test_an_invalid_message_in_a_batch_gets_its_own_error_and_the_rest_are_sent(
    postmark: PostmarkClient, url: str
) -> None:
    batch = [
        message("a@example.test"),
        message("b@example.test", Headers="notalist"),
        message("c@example.test", MessageStream="nope"),
    ]
    answers = postmark.emails._send_batch(*batch)
    assert [a["ErrorCode"] for a in answers] == [0, 403, 1235]
    assert "MessageID" not in answers[1] and "MessageID" not in answers[2]
    assert stats(url)["received"] == 1
    assert [str(m) for m in postmark.messages.outbound.all()] == ["Sent message to a@example.test"]


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"[{", 402), (b"[]", 300), (b'{"To": "a@example.test"}', 403)],
)
def test_a_batch_request_that_is_not_a_list_of_1_to_500_is_refused_whole(
    url: str, body: bytes, code: int
) -> None:
    reply = httpx.post(
        f"{url}/email/batch",
        content=body,
        headers={"X-Postmark-Server-Token": TOKEN, "Content-Type": "application/json"},
    )
    assert (reply.status_code, reply.json()["ErrorCode"]) == (422, code)
    assert set(reply.json()) == {"ErrorCode", "Message"}


def test_a_request_over_postmarks_size_limit_is_413(url: str) -> None:
    body = b'{"TextBody": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    reply = httpx.post(f"{url}/email", content=body, headers={"X-Postmark-Server-Token": TOKEN})
    assert reply.status_code == 413 and "ErrorCode" in reply.json()
    assert stats(url)["received"] == 0


def test_a_wrong_or_missing_token_is_401_error_10(url: str) -> None:
    wrong = PostmarkClient(server_token="not-the-token", root_api_url=f"{url}/")
    for call in (
        lambda: wrong.emails.send(From=FROM, To="a@example.test", TextBody="x"),
        wrong.messages.outbound.all,
        wrong.server.get,
        wrong.bounces.all,
    ):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.error_code == 10 and "was invalid" in str(refused.value)
    missing = httpx.get(f"{url}/server")
    assert missing.status_code == 401 and missing.json()["ErrorCode"] == 10
    assert "No Account or Server API tokens" in missing.json()["Message"]
    assert stats(url)["received"] == 0


def test_an_unknown_message_or_bad_paging_is_422_with_the_messages_api_codes(
    postmark: PostmarkClient, url: str
) -> None:
    with pytest.raises(ClientError) as unknown:
        postmark.messages.outbound.get("00000000-0000-0000-0000-000000000000")
    assert unknown.value.error_code == 701
    headers = {"X-Postmark-Server-Token": TOKEN}
    for query in (
        "count=abc&offset=0",
        "offset=0",
        "count=501&offset=0",
        "count=10&offset=9991",
        "count=1&offset=0&status=bounced",
        "count=1&offset=0&fromdate=yesterday",
    ):
        reply = httpx.get(f"{url}/messages/outbound?{query}", headers=headers)
        assert (reply.status_code, reply.json()["ErrorCode"]) == (422, 700), query


# --- searching -----------------------------------------------------------------------------


def test_outbound_search_applies_each_documented_filter(postmark: PostmarkClient) -> None:
    postmark.emails.send_batch(
        message("anna@example.test", 1, Tag="winback", Metadata={"send_key": "a"}),
        message(
            "ben@example.test",
            2,
            From="Other <other@example.org>",
            Tag="welcome",
            Metadata={"send_key": "b"},
        ),
        message(
            "cleo@example.test",
            3,
            Subject="Spring sale",
            MessageStream="broadcast",
            Metadata={"send_key": "c"},
        ),
    )
    outbound = postmark.messages.outbound

    def recipients(**filters: Any) -> list[str]:
        return [m.Recipients[0] for m in outbound.all(**filters)]

    assert recipients() == ["ben@example.test", "anna@example.test"]  # newest first
    assert [str(m) for m in outbound.all(count=1)] == ["Sent message to ben@example.test"]
    assert recipients(recipient="ANNA@example.test") == ["anna@example.test"]
    assert recipients(fromemail="other@example.org") == ["ben@example.test"]
    assert recipients(tag="winback") == ["anna@example.test"]
    assert recipients(subject="hello 2") == ["ben@example.test"]
    assert recipients(subject="nothing has this subject") == []
    assert recipients(status="sent") == recipients(status="processed") == recipients()
    assert recipients(status="queued") == []
    assert [m.Recipients[0] for m in outbound.all(count=10)] == recipients()
    stream = postmark.messages.outbound.call(
        "GET", "/messages/outbound", count=10, offset=0, messagestream="broadcast"
    )
    assert [m["Recipients"] for m in stream["Messages"]] == [["cleo@example.test"]]
    by_key = postmark.messages.outbound.call(
        "GET", "/messages/outbound", count=1, offset=0, metadata_send_key="b"
    )
    assert by_key["TotalCount"] == 1 and by_key["Messages"][0]["Metadata"] == {"send_key": "b"}


def test_fromdate_and_todate_are_inclusive_eastern_times() -> None:
    now = [datetime(2026, 3, 10, 14, 0, tzinfo=UTC)]  # 10:00 in New York (EDT)
    fake = FakeEsp(token=TOKEN, clock=lambda: now[0])
    with running(create_app(fake)) as url:
        postmark = PostmarkClient(server_token=TOKEN, root_api_url=f"{url}/")
        for day, to in ((9, "a@example.test"), (10, "b@example.test"), (11, "c@example.test")):
            now[0] = now[0].replace(day=day)
            postmark.emails.send(From=FROM, To=to, TextBody="x")

        def recipients(**filters: Any) -> list[str]:
            return [m.Recipients[0] for m in postmark.messages.outbound.all(**filters)]

        assert recipients(fromdate="2026-03-10") == ["c@example.test", "b@example.test"]
        assert recipients(todate="2026-03-10") == ["b@example.test", "a@example.test"]
        assert recipients(fromdate="2026-03-10T10:00:00", todate="2026-03-10T10:00:00") == [
            "b@example.test"
        ]
        assert recipients(fromdate="2026-03-10T10:00:01") == ["c@example.test"]


# --- bounces and the server ----------------------------------------------------------------


def test_a_bounce_is_listed_deactivates_the_address_and_can_be_reactivated(
    postmark: PostmarkClient, url: str
) -> None:
    sent = postmark.emails.send(From=FROM, To="gone@example.test", TextBody="x", Tag="winback")
    recorded = httpx.post(
        f"{url}/_webhooks/bounce", json={"message_id": sent["MessageID"]}, headers=CONTROL
    )
    assert recorded.status_code == 200 and recorded.json()["posted"] is None

    [bounce] = postmark.bounces.all()
    assert (bounce.Type, bounce.TypeCode, bounce.Email, bounce.MessageID, bounce.Inactive) == (
        "HardBounce",
        1,
        "gone@example.test",
        sent["MessageID"],
        True,
    )
    assert recorded.json()["event"]["ID"] == bounce.ID
    assert postmark.bounces.get(bounce.ID).Email == "gone@example.test"
    assert bounce.dump is None  # DumpAvailable: false
    assert postmark.bounces.all(emailFilter="nobody") == []
    assert len(postmark.bounces.all(type="HardBounce", inactive=True, tag="winback")) == 1
    events = postmark.messages.outbound.get(sent["MessageID"]).MessageEvents
    assert [e["Type"] for e in events] == ["Bounced"]

    with pytest.raises(ClientError) as inactive:
        postmark.emails.send(From=FROM, To="gone@example.test", TextBody="again")
    assert inactive.value.error_code == 406
    assert bounce.activate() == "OK" and bounce.Inactive is False
    assert postmark.emails.send(From=FROM, To="gone@example.test", TextBody="x")["ErrorCode"] == 0
    with pytest.raises(ClientError) as unknown:
        postmark.bounces.get(999_999)
    assert unknown.value.error_code == 1001


def test_an_unsubscribe_suppresses_the_address_as_at_postmark_without_a_bounce(
    postmark: PostmarkClient, url: str
) -> None:
    """An unsubscribe puts the address on the stream's suppression list (SubscriptionChange,
    ``ManualSuppression``), and Postmark answers a send to it 406: "Inactive recipients are
    ones that have generated a hard bounce, a spam complaint, or a manual suppression". The
    fake posted the webhook and took the next mail to the address: a test of recocamp
    against it could not see a mail go to someone who had unsubscribed at the ESP."""
    sent = postmark.emails.send(From=FROM, To="left@example.test", TextBody="x")
    recorded = httpx.post(
        f"{url}/_webhooks/unsubscribe", json={"message_id": sent["MessageID"]}, headers=CONTROL
    )
    assert recorded.status_code == 200
    assert recorded.json()["event"]["SuppressionReason"] == "ManualSuppression"
    with pytest.raises(ClientError) as inactive:
        postmark.emails.send(From=FROM, To="Left@Example.test", TextBody="again")
    assert inactive.value.error_code == 406
    assert postmark.bounces.all() == []  # a suppression, not a bounce
    assert postmark.emails.send(From=FROM, To="stays@example.test", TextBody="x")["ErrorCode"] == 0


def test_a_complaint_is_a_bounce_of_postmarks_spam_complaint_type_code(
    postmark: PostmarkClient, url: str
) -> None:
    """Postmark's bounce type ``SpamComplaint`` has TypeCode 100001 (Postmark's "Bounce
    types"; its own clients' enums); 512 is ``SpamNotification``, a soft bounce ("delivered,
    but … classified as spam"). The fake listed and posted complaints with 512: a client
    reading TypeCode took every complaint at the fake for a soft bounce."""
    sent = postmark.emails.send(From=FROM, To="cross@example.test", TextBody="x")
    recorded = httpx.post(
        f"{url}/_webhooks/complaint", json={"message_id": sent["MessageID"]}, headers=CONTROL
    )
    assert recorded.status_code == 200
    assert (recorded.json()["event"]["Type"], recorded.json()["event"]["TypeCode"]) == (
        "SpamComplaint",
        100001,
    )
    [bounce] = postmark.bounces.all(type="SpamComplaint")
    assert (bounce.Type, bounce.TypeCode) == ("SpamComplaint", 100001)


def test_server_info_is_postmarks_server_object(postmark: PostmarkClient) -> None:
    server = postmark.server.get()
    assert str(server) == "Server: recocamp fake ESP (1)"
    assert server.ApiTokens == [TOKEN] and server.DeliveryType == "Sandbox"


def test_an_unknown_path_answers_in_postmarks_error_shape(url: str) -> None:
    reply = httpx.get(f"{url}/templates", headers={"X-Postmark-Server-Token": TOKEN})
    assert reply.status_code == 404 and set(reply.json()) == {"ErrorCode", "Message"}
