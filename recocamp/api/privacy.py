"""Shop API, privacy administration (scope ``privacy:admin``), the twins of ``recocamp privacy``.

- ``GET /v1/privacy/customers/{id}``: everything held about a customer (GDPR Art. 15/20);
- ``DELETE /v1/privacy/customers/{id}``: erasure (Art. 17), see ``privacy``;
- ``POST /v1/privacy/purge``: the retention purge now (the worker runs it daily);
- ``GET /v1/privacy/retention``: how long what is kept.

Every request is recorded in the audit log under the API key's name.

When other customer ids hold the customer's address, export and erasure answer 409 naming
those ids (never the address) unless ``?scope=`` says whom they cover: ``id`` (this customer
alone) or ``all-matching`` (every customer id holding the address, as one person; an
erasure then needs ``&expect=N``, their number, else 409 naming the count); see
``privacy.holdings``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from recocamp import metrics, privacy
from recocamp.api import lean as api_lean
from recocamp.api.auth import PrivacyAdmin
from recocamp.api.pages import PrivateJSON
from recocamp.clock import Clock
from recocamp.errors import CoverageCountError, SharedAddressError
from recocamp.settings import PrivacySettings, Settings
from recocamp.store import tombstones
from recocamp.store.engine import Engine
from recocamp.store.queries import audit

log = logging.getLogger(__name__)
CustomerId = api_lean.GivenPathId
RequestScope = Annotated[
    Literal["id", "all-matching"] | None,
    Query(
        description="Needed only when other customer ids hold the customer's address (else "
        "409): `id` covers this customer alone (rows naming the others stay theirs), "
        "`all-matching` every customer id holding the address, as one person."
    ),
]
Expect = Annotated[
    int | None,
    Query(
        ge=1,
        description="With `scope=all-matching`: how many customer ids hold the address, as "
        "the export (`customers`) or a 409 said; needed when more than one, and an erasure "
        "finding another number is refused (409, nothing done).",
    ),
]
SHARED: dict[int | str, Any] = {
    409: {
        "description": "Other customer ids hold the customer's address: the answer names "
        "them (never the address); say whom the request covers with `scope`. Nothing was done."
    }
}


def _scope(scope: str | None) -> privacy.Scope:
    return privacy.Scope.UNSHARED if scope is None else privacy.Scope(scope)


def _ambiguous(error: SharedAddressError) -> HTTPException:
    if isinstance(error, CoverageCountError):
        return HTTPException(
            409,
            f"{error}; to erase every one of them say how many: "
            "?scope=all-matching&expect=N (N the count above), or ?scope=id for this id alone",
        )
    return HTTPException(
        409,
        f"{error}; say whom it covers: ?scope=id (this customer alone) or "
        "?scope=all-matching (every one of these customer ids, as one person)",
    )


class ErasureOut(BaseModel):
    erasure_id: int
    customer_ids: list[str] = Field(
        description="the customer ids erased: more than one only with scope=all-matching"
    )
    rows: dict[str, int]
    model_artifacts: int
    files_clean: bool = Field(
        description=(
            "true only when every file recocamp writes that could hold the customer was cleaned "
            "(files_left is empty and the SQLite write-ahead log was emptied)"
        )
    )
    files_rewritten: int = Field(description="drop-folder and demo files rewritten without them")
    files_left: list[str] = Field(description="files that could not be cleaned")
    not_covered: list[str] = Field(description="where erasure cannot reach, always")
    address_kept_for: int = Field(
        0,
        description="scope=id on a shared address: how many other customer ids hold it. The "
        "address stays open (not tombstoned): they keep it, a new sign-up at it is taken; "
        "rows holding it but naming no customer are left, as they cannot be attributed",
    )


class PurgeOut(BaseModel):
    outbox_bodies: int
    contact_events: int
    decisions: int
    erased_audit_entries: int
    model_artifacts: int
    model_customer_rows: int
    processed_files: int
    job_runs: int
    workers: int
    kept: dict[str, str]


class RetentionOut(BaseModel):
    days: PrivacySettings
    kept: dict[str, str]


def _erased(
    engine: Engine,
    settings: Settings,
    customer_id: str,
    now: datetime,
    via: str,
    scope: str | None,
    expect: int | None,
) -> privacy.ErasureReport:
    """The erasure, or the HTTP error that says why nothing was erased."""
    try:
        report = privacy.erase(
            engine, settings, customer_id, now, via=via, scope=_scope(scope), expect=expect
        )
    except tombstones.KeyMissing:
        raise HTTPException(
            503,
            "erasure needs RECOCAMP_SIGNING_KEY (it keys the tombstone); nothing was erased",
        ) from None
    except SharedAddressError as error:
        raise _ambiguous(error) from None
    if report is None:
        raise HTTPException(404, f"we hold no data about customer {customer_id!r}")
    return report


def router(
    settings: Settings,
    engine: Engine,
    clock: Clock,
    problems: dict[int | str, Any],
    on_change: Callable[[Iterable[str]], None] = lambda customer_ids: None,
) -> APIRouter:
    """``on_change``: told which customer an erasure removed, before the answer (see
    ``api.events.router``)."""
    api = APIRouter(tags=["privacy"], prefix="/v1/privacy", default_response_class=PrivateJSON)

    @api.get("/customers/{customer_id:path}", responses={**problems, **SHARED})
    def export(
        customer_id: CustomerId, key: PrivacyAdmin, scope: RequestScope = None
    ) -> dict[str, Any]:
        """Everything we hold about one customer, as JSON (404 when nothing)."""
        now = clock.now()
        try:
            document = privacy.export(
                engine, customer_id, now, scope=_scope(scope), settings=settings
            )
        except SharedAddressError as error:
            raise _ambiguous(error) from None
        if document is None:
            raise HTTPException(404, f"we hold no data about customer {customer_id!r}")
        with engine.begin() as connection:
            for exported in document["customer_ids"]:
                audit(
                    connection,
                    at=now,
                    actor=f"api:{key.name}",
                    action="customer_exported",
                    subject_type="customer",
                    subject_id=exported,
                    details={"scope": document["scope"]},
                )
        metrics.PRIVACY_REQUESTS.labels("export", "api").inc()
        return document

    unkeyed: dict[int | str, Any] = {
        503: {
            "description": (
                "RECOCAMP_SIGNING_KEY is not set: an erasure needs it for the tombstone that keeps "
                "the customer from coming back; or the store is busy or out of reach (with "
                "Retry-After: send the request again)."
            )
        }
    }

    @api.delete(
        "/customers/{customer_id:path}",
        response_model=ErasureOut,
        responses={**problems, **unkeyed, **SHARED},
    )
    def erase(
        customer_id: CustomerId,
        key: PrivacyAdmin,
        scope: RequestScope = None,
        expect: Expect = None,
    ) -> ErasureOut:
        """Erase a customer everywhere; 404 when we hold nothing about them."""
        if expect is not None and scope != privacy.Scope.ALL_MATCHING.value:
            raise HTTPException(409, "expect goes with scope=all-matching; nothing was erased")
        via = f"api:{key.name}"
        report = _erased(engine, settings, customer_id, clock.now(), via, scope, expect)
        on_change(report.customer_ids)
        return ErasureOut(
            customer_ids=list(report.customer_ids),
            erasure_id=report.erasure_id,
            rows=report.rows,
            model_artifacts=report.artifacts,
            files_clean=report.files_clean,
            files_rewritten=report.files,
            files_left=list(report.files_left),
            not_covered=list(report.not_covered),
            address_kept_for=report.address_kept_for,
        )

    @api.post("/purge", response_model=PurgeOut, responses=problems)
    def purge(key: PrivacyAdmin) -> PurgeOut:
        """Remove personal data past its retention period now."""
        report = privacy.purge(engine, settings, clock.now())
        return PurgeOut(**report.as_dict())

    @api.get("/retention", response_model=RetentionOut, responses=problems)
    def retention(key: PrivacyAdmin) -> RetentionOut:
        """The retention periods (``[privacy]`` settings) and what is kept for good."""
        return RetentionOut(days=settings.privacy, kept=privacy.KEPT)

    return api
