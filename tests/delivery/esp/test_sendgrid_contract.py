"""The sendgrid provider against a real HTTP server that validates as SendGrid documents.

SendGrid's Mail Send errors (twilio.com/docs/sendgrid/api-reference/mail-send/errors, and
its support article on validation errors): a content part of length 0 is a 400 for the
whole message, "The content value must be a string at least one character in length", field
``content.N.value``; a success is 202 with the message id in ``X-Message-Id``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from recocamp.delivery.esp.fake_server import running
from recocamp.delivery.esp.sendgrid import SendGrid
from recocamp.domain import SendStatus
from recocamp.errors import DeliveryError
from tests.delivery.test_deliver import email

TOKEN = "SG.test-key"
FROM = "shop@example.test"


def sendgrid_app(received: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v3/mail/send")
    async def send(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"errors": [{"message": "unauthorized"}]}, 401)
        body = await request.json()
        for n, part in enumerate(body.get("content") or []):
            if not part.get("value"):
                message = "The content value must be a string at least one character in length."
                return JSONResponse(
                    {"errors": [{"message": message, "field": f"content.{n}.value"}]}, 400
                )
        if [p["type"] for p in body["content"]][:1] not in (["text/plain"], ["text/html"]):
            return JSONResponse({"errors": [{"message": "order", "field": "content"}]}, 400)
        received.append(body)
        return Response(status_code=202, headers={"X-Message-Id": f"sg-{len(received)}"})

    return app


@pytest.fixture
def sendgrid() -> Iterator[tuple[list[dict[str, Any]], str]]:
    received: list[dict[str, Any]] = []
    with running(sendgrid_app(received)) as url:
        yield received, url


def send(url: str, text: str, html: str) -> Any:
    provider = SendGrid(url, TOKEN, FROM)
    try:
        return provider.send_batch([replace(email(1), text=text, html=html)])
    finally:
        provider.close()


def test_an_empty_text_part_is_left_out_and_the_html_mail_goes(
    sendgrid: tuple[list[dict[str, Any]], str],
) -> None:
    received, url = sendgrid
    [result] = send(url, "", "<p>only HTML</p>")
    assert (result.status, result.message_id) == (SendStatus.ACCEPTED, "sg-1")
    assert received[0]["content"] == [{"type": "text/html", "value": "<p>only HTML</p>"}]


def test_both_parts_go_plain_first(sendgrid: tuple[list[dict[str, Any]], str]) -> None:
    received, url = sendgrid
    [result] = send(url, "plain", "<p>html</p>")
    assert result.status is SendStatus.ACCEPTED
    assert [p["type"] for p in received[0]["content"]] == ["text/plain", "text/html"]


def test_a_400_whose_body_is_not_sendgrids_shape_stops_the_run_not_a_crash() -> None:
    """Not SendGrid's error object: no word about the message, which is not failed for good
    (``http.error_body``); the claims go back and the run stops naming the answer."""
    app = FastAPI()

    @app.post("/v3/mail/send")
    async def send_list() -> JSONResponse:
        return JSONResponse(["not", "an", "object"], 400)

    with running(app) as url:
        provider = SendGrid(url, TOKEN, FROM)
        try:
            with pytest.raises(DeliveryError, match="HTTP 400") as info:
                provider.send_batch([email(1)])
            assert type(info.value) is DeliveryError
        finally:
            provider.close()
