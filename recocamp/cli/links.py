"""``recocamp link``: a customer's signed link to the pages behind signed links (``api.pages``).

The link is the one a campaign e-mail carries (``campaigns.compose.links``: ``[api]
public_url``, the path, a token signed with ``RECOCAMP_SIGNING_KEY`` at the command line's
clock): ``preferences`` is the preferences page (``/p/TOKEN``), ``unsubscribe`` the
unsubscribe link (``/u/TOKEN``: a confirm button, or RFC 8058 one-click as a POST), ``data``
the download of everything held (``/p/TOKEN/data.json``, a preferences token). Feedback
links are not minted: they answer an NPS survey, which a hand-made link would skew.

The campaign claim is not checked against the campaign files by the pages: it is recorded
(an unsubscribe's contact event and audit source, ``link CAMPAIGN``) and shown (the
preferences page's "why you got this e-mail"). The default, ``tokens.MANUAL_CAMPAIGN``, can
be no campaign's name (those are ``[a-z0-9_]``), so a hand-made link's unsubscribe is never
counted against a real campaign, and the page says that no campaign sent it.

A link the pages would refuse is not minted (exit 2, one line, nothing written): no signing
key, an id that cannot be one, a customer we do not hold, or an erased one
(``tombstones.void_link``, the pages' own check: a link for an erased record reaches nobody).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from recocamp import tokens
from recocamp.campaigns import compose
from recocamp.cli.common import (
    Output,
    app,
    clock,
    current_settings,
    engine_for,
    errors_to_exit,
    print_error,
    print_json,
)
from recocamp.domain import ID_MAX, id_problem
from recocamp.store import pages, tombstones

DEFAULT_CAMPAIGN = tokens.MANUAL_CAMPAIGN
KEY_HINT = (
    "links are signed with it; set it to the key the API verifies them with "
    "(the demo's is in demo/signing.key: RECOCAMP_SIGNING_KEY=$(cat demo/signing.key))"
)


class Purpose(StrEnum):
    preferences = "preferences"
    unsubscribe = "unsubscribe"
    data = "data"


def _campaign(value: str) -> str:
    """``--campaign``: recorded with an unsubscribe (a column of 100 characters) and shown on
    the page, so printable and at most ``domain.ID_MAX`` characters, like a campaign name."""
    problem = "is empty" if not value else id_problem(value)
    if problem:
        raise typer.BadParameter(f"{_shown(value)} {problem}")
    return value


def _shown(value: str) -> str:
    """A value as an error names it: quoted, escaped, cut at ``domain.ID_MAX`` characters."""
    return repr(value[:ID_MAX]) + ("…" if len(value) > ID_MAX else "")


def _refuse(message: str) -> typer.Exit:
    print_error(f"{message}; no link was made")
    return typer.Exit(2)


@app.command("link")
def link(
    customer_id: str,
    purpose: Annotated[
        Purpose,
        typer.Option(
            "--purpose",
            help="preferences: the preferences page (/p/); unsubscribe: the unsubscribe link "
            "(/u/); data: the download of all data held (/p/…/data.json).",
        ),
    ] = Purpose.preferences,
    campaign: Annotated[
        str,
        typer.Option(
            "--campaign",
            callback=_campaign,
            help="The campaign the link names: recorded with an unsubscribe and shown on the "
            f"page (default {DEFAULT_CAMPAIGN}, which is no campaign's name).",
        ),
    ] = DEFAULT_CAMPAIGN,
    format: Annotated[
        Output, typer.Option("--format", help="table: the URL alone; json: with its claims.")
    ] = Output.table,
) -> None:
    """Print CUSTOMER_ID's signed link ([api] public_url, signed with RECOCAMP_SIGNING_KEY
    now), as a campaign e-mail carries it. Writes nothing."""
    problem = "is empty" if not customer_id else id_problem(customer_id)
    if problem:
        raise _refuse(f"customer id {_shown(customer_id)} {problem}")
    with errors_to_exit():
        settings = current_settings()
        key = settings.signing_key_bytes()
        if key is None:
            raise _refuse(f"RECOCAMP_SIGNING_KEY is not set: {KEY_HINT}")
        issued = datetime.fromtimestamp(int(clock.now().timestamp()), UTC)  # a token's second
        with engine_for(settings).connect() as connection:
            erased = tombstones.key_of(settings) or key  # a tombstone under a retired key too
            if tombstones.void_link(connection, erased, customer_id, issued, writing=False):
                raise _refuse(f"customer {customer_id!r} was erased: a link would reach nobody")
            if not pages.exists(connection, customer_id):
                raise _refuse(f"we hold no customer {customer_id!r}")
            address = pages.email(connection, customer_id)  # the link names it, as mail's do
    links = compose.links(settings, key, customer_id, campaign, issued, address)
    url = {
        Purpose.preferences: links.preferences,
        Purpose.unsubscribe: links.unsubscribe,
        Purpose.data: f"{links.preferences}/data.json",
    }[purpose]
    if format is Output.json:
        document = {
            "customer_id": customer_id,
            "purpose": purpose.value,
            "campaign": campaign,
            "issued_at": issued.isoformat(),
            "url": url,
        }
        print_json(document, indent=1)
        return
    sys.stdout.write(url + "\n")  # verbatim: a URL must not be wrapped
