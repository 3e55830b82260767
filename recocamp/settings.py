"""settings.toml (+ ``RECOCAMP_*`` environment overrides) → frozen, validated Settings.

Where a value comes from, highest priority first:

1. environment: ``RECOCAMP_<KEY>`` for top-level keys (``RECOCAMP_DATABASE_URL``) and
   ``RECOCAMP_<SECTION>__<KEY>`` for keys in a section (``RECOCAMP_ESP__BASE_URL``),
   pydantic-settings' nested delimiter;
2. the settings file: ``--settings PATH``, else ``$RECOCAMP_SETTINGS``, else
   ``./settings.toml`` when it exists;
3. the defaults below (the documented ``settings.toml`` repeats them).

Secrets (``esp_token``, ``signing_key``, ``signing_keys_retired``, ``api_keys``,
``webhook_secret``) are read from the environment only; a settings file that contains one is
refused, so they never end up in a repository.

``signing_key`` and ``webhook_secret`` should be at least :data:`MIN_SECRET_BYTES` long
(:func:`weak_secrets`: ``check``, ``worker`` and ``serve`` warn, naming the setting, never
its value). A warning, not a refusal: an install whose key is shorter holds tombstones and
has mailed links under it, which a refusal would strand (erased customers would come back,
old unsubscribe links would stop working). The way out is a rotation: the old key moves to
``signing_keys_retired`` (:meth:`Settings.retired_signing_keys`), which only ever checks
(tombstones, unsubscribe links) and never signs or writes. An empty (or white space only)
``signing_key`` is refused, not warned about: it is no secret at all.
A bad value fails with a :class:`~recocamp.errors.ConfigError` naming the file (or the
environment variable), the dotted key, its line and the value.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_origin
from urllib.parse import quote, unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from recocamp.config_files import error_hidden, line_of, read_toml, validated
from recocamp.domain import (
    GZIP_RATIO_LIMIT,
    GZIP_RATIO_MAX,
    MAX_COUNT,
    MAX_DAYS,
    Locale,
    email_problem,
    zone_name_problem,
)
from recocamp.errors import ConfigError, Problem

if TYPE_CHECKING:  # imported when a schedule is read: the settings load without it
    from apscheduler.triggers.cron import CronTrigger

ENV_PREFIX = "RECOCAMP_"
SECRET_KEYS = ("esp_token", "signing_key", "signing_keys_retired", "api_keys", "webhook_secret")
# a signing key or webhook secret shorter than this is warned about (weak_secrets): an HMAC
# key of 8 characters is found offline from one link, and the tombstones' hashes with it
MIN_SECRET_BYTES = 32
MAX_RETIRED_KEYS = 16  # every tombstone check hashes under each: a few rotations' worth
DEFAULT_FILE = Path("settings.toml")
# Every number a person writes here has a range: an unbounded one passes the schema and
# fails later (a timedelta or a float that overflows, a fork per process asked for), or
# switches a protection off (a template limit of 10**100). Days and counts share the
# campaigns' bounds (domain.MAX_DAYS, MAX_COUNT); a float is finite.
MAX_SECONDS = 604_800  # an interval, timeout, lease or backoff: a week
MIN_POLL_S = 0.1  # the worker's polling intervals (heartbeat, delivery, drop folder)
MAX_SEED = 2**32 - 1  # numpy's RandomState (implicit's random_state) takes 0 to 2**32 - 1
MAX_PROCESSES = 256  # processes started for one job
MAX_POINTS = 1_000_000  # loyalty points per event or currency unit


def check_zone(name: str) -> str:
    """A zone ``ZoneInfo`` loads. It opens the name as a file of the zone database, so a
    region (``Europe``: a folder) or a name longer than the system allows is an OSError, a
    traceback from every command (and no worker) rather than the key's problem. The
    problem's value shows the name (cut when long)."""
    problem = zone_name_problem(name)
    if problem:
        raise ValueError(problem)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("unknown IANA time zone") from None
    return name


TimeZoneName = Annotated[str, AfterValidator(check_zone)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SHOP_NAME_MAX = 200  # the shop's name in e-mails, subjects and pages: one line


def _one_line(name: str) -> str:
    """The shop's name is printed in every e-mail, page and subject, but ``check`` renders
    the templates with a sample shop's: a name past the render's output bound passed it and
    failed every e-mail of every run. One printable line (no NUL, no line break)."""
    if not name.isprintable():
        raise ValueError("must be one line of printable characters (no control character)")
    return name


def _links_base(url: HttpUrl) -> HttpUrl:
    """``[shop] base_url`` and ``[api] public_url``: every e-mail's links append a path to
    them (``/items/ID``, ``/u/TOKEN``, ``/p/TOKEN``, ``/v1/feedback?…``). After a query or a
    fragment the path landed in it (``…?src=mail/u/TOKEN``): no one-click unsubscribe
    (RFC 8058) of any e-mail reached a page. A user name or password went out in every
    e-mail (the problem does not repeat it)."""
    if url.username or url.password:
        raise error_hidden("must not hold a user name or password: every e-mail shows it")
    if url.query is not None or url.fragment is not None:
        raise ValueError(
            "must have no ?query or #fragment: the links append their path to it "
            "(…?src=mail/u/TOKEN would reach no page)"
        )
    return url


LinksBase = Annotated[HttpUrl, AfterValidator(_links_base)]


class ShopSettings(_Section):
    name: Annotated[
        str, Field(min_length=1, max_length=SHOP_NAME_MAX), AfterValidator(_one_line)
    ] = "Demo Shop"
    base_url: LinksBase = HttpUrl("https://shop.example.test")
    time_zone: TimeZoneName = "Europe/Berlin"
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    default_locale: Locale = "de"

    @property
    def zone(self) -> ZoneInfo:
        """The shop's zone (``time_zone``, checked when the settings load). ``ZoneInfo`` keeps
        its instances, so this is the same object every time; a property rather than a cached
        one, so a ``model_copy`` with another ``time_zone`` never answers with the old zone."""
        return ZoneInfo(self.time_zone)


def not_a_file(folder: Path) -> str | None:
    """Why ``folder`` cannot be a folder the drop folder works in (a file of that name is
    there), or None: a missing one is made when first needed."""
    return "names a file, not a folder" if folder.exists() and not folder.is_dir() else None


def files_as_folders(settings: Settings, text: str = "") -> list[Problem]:
    """The drop folder's folders (``[ingest] drop_dir``, its ``rejected/``, and
    ``processed_dir`` where files are kept) that a file stands in the way of, with their
    line in the settings file's ``text``: checked once the paths are anchored, when the
    settings load, and before each run imports anything."""
    ingest = settings.ingest
    folders = [
        ("drop_dir", "", ingest.drop_dir),
        ("drop_dir", " (its rejected/)", ingest.drop_dir / "rejected"),
    ]
    if ingest.keep_processed_days:
        folders.append(("processed_dir", "", ingest.processed_dir))
    found = []
    for key, part, folder in folders:
        problem = not_a_file(folder)
        if problem is not None:
            line = line_of(text, ("ingest", key)) if text else None
            found.append(Problem(problem, key=f"ingest.{key}{part}", line=line, value=str(folder)))
    shared = processed_dir_shared(ingest.drop_dir, ingest.processed_dir)
    if shared is not None:
        line = line_of(text, ("ingest", "processed_dir")) if text else None
        found.append(
            Problem(shared, key="ingest.processed_dir", line=line, value=str(ingest.processed_dir))
        )
    return found


def processed_dir_shared(drop_dir: Path, processed_dir: Path) -> str | None:
    """Why ``processed_dir`` cannot be the folder it is, or None. The retention purge deletes
    every file directly in it past ``keep_processed_days`` (with 0, every file): the drop
    folder itself lost files not yet imported, and kept ones, renamed ``2-…`` beside
    themselves, were set aside as of an unknown kind, in ``rejected/`` for good; ``rejected/``
    lost what waits for the operator; a folder above the drop folder (``.``) lost whatever
    lies there, the settings file and SQLite's shared-memory file among them."""
    drop, processed = (Path(os.path.abspath(p)).resolve() for p in (drop_dir, processed_dir))
    if processed in (drop, drop / "rejected"):
        return "is the drop folder (or its rejected/): imported files need a folder of their own"
    if processed in drop.parents:
        return (
            "holds the drop folder: the retention purge deletes the files directly in it, "
            "so it must be a folder of their own (such as incoming/processed)"
        )
    return None


class IngestSettings(_Section):
    drop_dir: Path = Path("incoming")
    processed_dir: Path = Path("incoming/processed")
    keep_processed_days: int = Field(default=0, ge=0, le=3650)  # 0: delete once imported
    max_errors_listed: int = Field(default=20, ge=1, le=10_000)
    # decompressed bytes per byte of a .gz file (a gzip bomb is refused: sources.open_text)
    max_gzip_ratio: int = Field(default=GZIP_RATIO_MAX, ge=10, le=GZIP_RATIO_LIMIT)


class DemoSettings(_Section):
    online_retail_path: Path = Path("../shared/data/online-retail/online_retail.csv.gz")
    seed: int = Field(default=20111209, ge=0, le=MAX_SEED)
    synthetic_customers: int = Field(default=3000, ge=10, le=10_000_000)
    synthetic_items: int = Field(default=1500, ge=10, le=10_000_000)
    synthetic_days: int = Field(default=365, ge=30, le=MAX_DAYS)
    double_opt_in_share: float = Field(default=0.55, ge=0, le=1)
    existing_customer_share: float = Field(default=0.30, ge=0, le=1)
    objected_share: float = Field(default=0.03, ge=0, le=1)


class KpiSettings(_Section):
    window_days: int = Field(default=365, ge=1, le=MAX_DAYS)


class ForecastSettings(_Section):
    horizon_days: int = Field(default=90, ge=7, le=730)
    lifetime_days: int = Field(default=365, ge=30, le=3650)

    @field_validator("lifetime_days")
    @classmethod
    def _lifetime_covers_horizon(cls, value: int, info: ValidationInfo) -> int:
        """The lifetime is the horizon or longer: ``lifetime_value`` is the horizon's
        expected revenue stretched to it (``forecast.outlook``), and a shorter one shrank
        it, a customer's lifetime value below what they are expected to spend within the
        horizon (and ``lifetime_value_top_share`` chose by it)."""
        horizon = info.data.get("horizon_days")
        if horizon is not None and value < horizon:
            raise ValueError(
                f"must be at least horizon_days ({horizon}): the lifetime value stretches "
                "the horizon's expected revenue, and a shorter lifetime would shrink it"
            )
        return value


class RecommenderSettings(_Section):
    model: Literal["als", "bpr", "item_knn", "popularity", "repeat_frequency", "hybrid"] = "hybrid"
    artifacts_dir: Path = Path("artifacts/models")
    top_n: int = Field(default=20, ge=1, le=1000)
    factors: int = Field(default=64, ge=2, le=1024)  # × (customers + items) floats
    iterations: int = Field(default=15, ge=1, le=10_000)
    regularization: float = Field(default=0.01, ge=0, le=1_000_000, allow_inf_nan=False)
    random_state: int = Field(default=42, ge=0, le=MAX_SEED)
    recent_popularity_days: int = Field(default=90, ge=1, le=MAX_DAYS)
    time_decay_half_life_days: float | None = Field(
        default=None, gt=0, le=MAX_DAYS, allow_inf_nan=False
    )
    promote_metric: Literal["recall", "ndcg", "hit_rate"] = "recall"
    evaluation_horizon_days: int = Field(default=90, ge=1, le=MAX_DAYS)
    use_gpu: Literal["auto", "true", "false"] = "auto"
    bpr_iterations: int = Field(default=100, ge=1, le=100_000)
    bpr_learning_rate: float = Field(default=0.01, gt=0, le=1, allow_inf_nan=False)
    knn_weighting: Literal["bm25", "cosine"] = "bm25"
    knn_neighbours: int = Field(default=20, ge=1, le=10_000)  # kept per item: × items
    evaluation_k: int = Field(default=10, ge=1, le=1000)  # as top_n
    evaluation_max_customers: int = Field(default=20000, ge=100, le=MAX_COUNT)
    evaluation_sample_seed: int = Field(default=0, ge=0, le=MAX_SEED)
    cache_active_days: int | None = Field(default=365, ge=1, le=MAX_DAYS)


class CapsSettings(_Section):
    max_per_24h: int = Field(default=1, ge=0, le=MAX_COUNT)
    max_per_7d: int = Field(default=3, ge=0, le=MAX_COUNT)
    campaign_cooldown_days: int = Field(default=7, ge=0, le=MAX_DAYS)
    quiet_hours_start: time = time(21, 0)
    quiet_hours_end: time = time(8, 0)
    campaigns_may_relax: bool = False


class CampaignSettings(_Section):
    """How a campaign run is cut up (``campaigns.run``)."""

    # customers decided, recorded and enqueued per transaction: delivery starts after the
    # first chunk, a crash loses at most the chunk in flight, and the write lock is held
    # for one chunk's insert at a time (a bigger chunk makes the deliverers wait longer)
    chunk_size: int = Field(default=1000, ge=1, le=50_000)


class LoyaltyTier(_Section):
    name: str = Field(min_length=1, max_length=100)  # shown in e-mails
    min_points: int = Field(ge=0, le=MAX_COUNT)


class LoyaltySettings(_Section):
    points_per_order: int = Field(default=10, ge=0, le=MAX_POINTS)
    # × a customer's spend (up to 10⁹ a line): a bigger factor is not a finite number of points
    points_per_currency_unit: float = Field(default=1.0, ge=0, le=MAX_POINTS, allow_inf_nan=False)
    points_per_review: int = Field(default=25, ge=0, le=MAX_POINTS)
    points_per_newsletter_signup: int = Field(default=50, ge=0, le=MAX_POINTS)
    tiers: tuple[LoyaltyTier, ...] = Field(
        default=(
            LoyaltyTier(name="bronze", min_points=0),
            LoyaltyTier(name="silver", min_points=500),
            LoyaltyTier(name="gold", min_points=2000),
            LoyaltyTier(name="platinum", min_points=10000),
        ),
        max_length=100,
    )

    @model_validator(mode="after")
    def _ascending(self) -> LoyaltySettings:
        """At least one tier (a customer's standing names one), thresholds ascending. Here,
        not ``min_length``: pydantic also reports that when a tier is refused."""
        if not self.tiers:
            raise ValueError("at least one tier is needed")
        thresholds = [tier.min_points for tier in self.tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError(f"tier thresholds must strictly ascend, got {thresholds}")
        return self


def sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's event-webhook verification key (``[esp] webhook_public_key``: base64 of a
    DER-encoded P-256 public key), as the signature check loads it; ValueError if it is
    none. Read when the settings load, so that ``check`` and ``serve`` refuse a key that
    would answer every SendGrid webhook 401."""
    try:
        key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        raise ValueError("is not base64 of a DER-encoded public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("is not an ECDSA P-256 public key (SendGrid's kind)")
    return key


def _check_sendgrid_key(text: str | None) -> str | None:
    if text is not None:
        try:
            sendgrid_key(text)
        except ValueError as exc:  # the message names the problem, never the key
            raise error_hidden(
                f"{exc}: copy the verification key of SendGrid's signed event webhook"
            ) from None
    return text


PLAIN_ADDRESS = (
    "is not one plain e-mail address (the address alone: no mailto:, name, list, white "
    'space or any of , ; < > ( ) [ ] " \\ :)'
)
# "Demo Shop <shop@example.test>": a name of printable characters but the address's
# delimiters and specials, then one plain address in angle brackets
NAMED_ADDRESS = re.compile(r'([^<>@,;:"\\()\[\]]*[^<>@,;:"\\()\[\]\s]) *<([^<>]*)>')
NAMED_SENDERS = ("postmark", "fake")  # Postmark's From takes "Name <address>"; the fake is it


def _plain_address(value: str | None) -> str | None:
    """``[esp] unsubscribe_mailto``: it is written after ``mailto:`` in every e-mail's
    List-Unsubscribe header, so it is one bare address (``domain.email_problem``); a
    ``mailto:`` of its own, a name or a list would send mail clients' unsubscribes nowhere,
    and ``>, <https://…`` would add a link of someone else's to every header."""
    if value is not None and email_problem(value):
        raise ValueError(PLAIN_ADDRESS)
    return value


LOOPBACK_NAMES = ("localhost", "localhost.")


def _https_unless_local(url: HttpUrl) -> HttpUrl:
    """``[api] public_url`` goes into every e-mail's List-Unsubscribe header, whose one-click
    unsubscribe (RFC 8058) must be an HTTPS URI; plain http only for a server on this
    machine (the demo, tests)."""
    if url.scheme == "https" or _is_loopback(url.host or ""):
        return url
    raise ValueError(
        "must be an https:// URL: one-click unsubscribe (RFC 8058) needs HTTPS "
        "(http:// only for localhost or a loopback address)"
    )


def _is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class EspSettings(_Section):
    provider: Literal["postmark", "sendgrid", "brevo", "mailpit", "fake"] = "postmark"
    base_url: HttpUrl = HttpUrl("http://127.0.0.1:8025")
    from_email: str = "shop@example.test"
    batch_size: int = Field(default=500, ge=1, le=500)
    # API requests per second
    rate_limit_per_s: float = Field(default=50.0, gt=0, le=1_000_000, allow_inf_nan=False)
    timeout_s: float = Field(default=10.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    # the backoff doubles per attempt: 2**1100 is no float (and 100 tries is plenty)
    max_attempts: int = Field(default=6, ge=1, le=100)
    retry_base_s: float = Field(default=2.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    retry_max_s: float = Field(default=900.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    pause_error_rate: float = Field(default=0.2, gt=0, le=1, allow_inf_nan=False)
    pause_min_messages: int = Field(default=50, ge=1, le=MAX_COUNT)
    claim_lease_s: float = Field(default=300.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    # 0: one per CPU core
    delivery_processes: int = Field(default=0, ge=0, le=MAX_PROCESSES)
    message_stream: str = "broadcast"
    unsubscribe_mailto: Annotated[str | None, AfterValidator(_plain_address)] = None
    # SendGrid's signed event webhook (base64 DER), checked as the verifier loads it
    webhook_public_key: Annotated[str | None, AfterValidator(_check_sendgrid_key)] = None

    @field_validator("from_email")
    @classmethod
    def _one_sender(cls, value: str, info: ValidationInfo) -> str:
        """Every message's From: one address, ``shop@example.test``, or with a name, ``Demo
        Shop <shop@example.test>``, where the provider takes one (Postmark's From does;
        SendGrid, Brevo and Mailpit take the address alone, in a field ``email``). Anything
        else (no ``@``, ``mailto:``, a list) passed ``check`` and failed every message of
        every run at the provider."""
        if not email_problem(value):
            return value
        named = NAMED_ADDRESS.fullmatch(value)
        if named is None or email_problem(named[2]) or not value.isprintable():
            raise ValueError(
                "is not one sender address (the address alone, or a name and the address "
                'in angle brackets: no mailto:, list or any of , ; ( ) [ ] " \\ : in the address)'
            )
        provider = info.data.get("provider")
        if provider not in NAMED_SENDERS:
            raise ValueError(
                f"has a name, and provider {provider!r} takes the address alone "
                f"(a name only with {' or '.join(NAMED_SENDERS)})"
            )
        return value

    @model_validator(mode="after")
    def _request_within_lease(self) -> EspSettings:
        """A deliverer renews its claims once half of ``claim_lease_s`` is gone, just before
        a request, which may then take ``timeout_s``: a longer request outlives the lease,
        another deliverer takes the claims over and sends them too — a duplicate."""
        if self.timeout_s > self.claim_lease_s / 2:
            raise ValueError(
                f"timeout_s ({self.timeout_s:g}) must be at most half of claim_lease_s "
                f"({self.claim_lease_s:g}): a request longer than what is left of a claim's "
                "lease lets another deliverer send it too"
            )
        return self


class ApiSettings(_Section):
    public_url: Annotated[LinksBase, AfterValidator(_https_unless_local)] = HttpUrl(
        "http://127.0.0.1:8000"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_000_000, ge=1024, le=100_000_000)  # 100 MB
    rate_limit_per_minute: int = Field(default=6000, ge=1, le=MAX_COUNT)
    # failed authentications (401) per client address: API keys and webhooks (api.auth)
    auth_failures_per_minute: int = Field(default=30, ge=1, le=MAX_COUNT)
    cors_origins: tuple[str, ...] = ()
    workers: int = Field(default=1, ge=1, le=64)
    response_cache_entries: int = Field(default=100_000, ge=0, le=10_000_000)  # in memory
    refresh_s: float = Field(default=5.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)


class PrivacySettings(_Section):
    """Retention: how long personal data that is no longer needed is kept (privacy.purge)."""

    outbox_body_days: int = Field(default=90, ge=1, le=MAX_DAYS)
    contact_events_days: int = Field(default=730, ge=1, le=MAX_DAYS)
    decisions_days: int = Field(default=400, ge=1, le=MAX_DAYS)
    erased_audit_days: int = Field(default=1095, ge=1, le=MAX_DAYS)
    retired_model_days: int = Field(default=90, ge=1, le=MAX_DAYS)
    # the worker's job and campaign run history (``runs``); past a week: a run within
    # ``[worker] resume_window_s`` (at most a week) may still be resumed
    job_runs_days: int = Field(default=400, ge=8, le=MAX_DAYS)


class TemplateSettings(_Section):
    """Hard limits on one render of a template (check, preview, plan, send, delivery): a
    template is written by a person, and one must not be able to stop the sending. Past a
    limit the render fails (that message, or a problem for ``check``). Each limit has a
    ceiling too, or a setting of 10**100 would switch the protection off; and a floor, below
    which no ordinary template renders."""

    # CPU seconds (a busy machine waits)
    render_time_s: float = Field(default=1.0, ge=0.01, le=60, allow_inf_nan=False)
    # per part, and per value
    max_output_chars: int = Field(default=1_000_000, ge=10_000, le=100_000_000)
    # loop iterations and calls
    max_loop_iterations: int = Field(default=100_000, ge=100, le=100_000_000)
    # 4096 bits: about 10**1233; 100,000 bits (about 10**30103) multiply in microseconds
    max_int_bits: int = Field(default=4096, ge=64, le=100_000)
    max_depth: int = Field(default=50, ge=1, le=100)  # macros, recursive loops


# A five-field cron expression that fires at all fires within any 28 years between 1901 and
# 2099 (the calendar's days and weekdays repeat every 28 years there), so searching 29 years
# from a fixed instant answers "does it ever fire" the same on every day check runs
CRON_FROM = datetime(2001, 1, 1, tzinfo=UTC)
CRON_YEARS = 29


WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbers: 0 (and 7) Sunday


def cron_trigger(expression: str, timezone: Any = None, **bounds: datetime) -> CronTrigger:
    """A five-field crontab as cron reads it. APScheduler 3's ``from_crontab`` counts
    numeric weekdays from Monday (0 Monday, 7 refused): ``0 9 * * 1`` (Monday) ran on Tuesday
    and ``1-5`` from Tuesday to Saturday. Here a weekday field with numbers becomes the names
    of its days (see :func:`cron_weekdays`); everything else is APScheduler's, including that
    day of month and weekday must both match. ``bounds``: ``start_date``, ``end_date``."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"Wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=cron_weekdays(weekday),
        timezone=timezone,
        **bounds,
    )


def cron_weekdays(field: str) -> str:
    """A cron weekday field (``1-5``, ``*/2``, ``0,3``, ``5-7``, names) as the comma list of
    day names it means; ``*`` is left to APScheduler as it is. Names too: APScheduler 3
    counts Sunday last, so it refused ``SUN-THU`` (a range backwards), which cron reads as
    Sunday to Thursday."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.split(","):
        days |= _weekday_part(part)
    return ",".join(WEEKDAYS[day] for day in sorted(days))


def _weekday_part(part: str) -> set[int]:
    span, slash, step_text = part.partition("/")
    if slash and not (step_text.isascii() and step_text.isdigit() and int(step_text) >= 1):
        raise ValueError(f"weekday step {step_text!r} is not a whole number from 1")
    step = int(step_text) if slash else 1
    if span == "*":
        first, last = 0, 6
    elif "-" in span:
        start, _, end = span.partition("-")
        first, last = _weekday(start), _weekday(end)
    else:
        first = _weekday(span)
        last = 6 if slash else first  # a/n: from a to Saturday
    if first > last:
        raise ValueError(f"weekday range {span!r} runs backwards")
    return {day % 7 for day in range(first, last + 1, step)}


def _weekday(text: str) -> int:
    """0–7 (0 and 7: Sunday) or a day's name."""
    if text.isascii() and text.isdigit() and int(text) <= 7:
        return int(text)
    if text.lower() in WEEKDAYS:
        return WEEKDAYS.index(text.lower())
    raise ValueError(f"weekday {text!r} is not 0–7 or sun–sat")


def first_fire(
    expression: str, now: datetime = CRON_FROM, years: int = CRON_YEARS
) -> datetime | None:
    """When a valid crontab expression first fires after ``now`` (in UTC), or None when it does
    not within ``years``: APScheduler requires day of month, month and weekday all to match,
    so ``0 0 31 2 *`` (February 31st) or ``0 0 30 2 MON`` never fires, and its unbounded
    search would walk the years to 9999."""
    trigger = cron_trigger(
        expression, UTC, start_date=now, end_date=now + timedelta(days=366 * years)
    )
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    return fire


def never_fires(expression: str) -> str | None:
    """The reason a valid crontab expression can never fire, or None."""
    if first_fire(expression) is not None:
        return None
    return "never fires: no date has this day of month, month and weekday (all must match)"


def fires_too_often(expression: str, least: timedelta) -> str | None:
    """Why a valid crontab expression fires more often than every ``least``, or None. Every
    hour with a fire holds all the minutes of the minute field (it does not depend on the
    others), so the first two fires are the closest ones whenever any two are this close."""
    first = first_fire(expression)
    if first is None:
        return None
    trigger = cron_trigger(expression, UTC)
    second: datetime | None = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
    if second is None or second - first >= least:
        return None
    return (
        f"fires more than once an hour (at {first:%H:%M} and then {second:%H:%M}): give the "
        "minute field one value ('0 9 * * *': daily at 09:00, '0 * * * *': hourly)"
    )


def _crontab(value: str) -> str:
    cron_trigger(value)  # raises ValueError with the reason
    if (reason := never_fires(value)) is not None:
        raise ValueError(reason)
    return value


Crontab = Annotated[str, AfterValidator(_crontab)]


# a host name (RFC 1123): dot-separated labels of letters, digits and inner hyphens
HOST_NAME = re.compile(
    r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*"
)


class WorkerSettings(_Section):
    """``recocamp worker``: what runs when (cron in the shop's zone), and how it behaves."""

    train_cron: Crontab = "0 3 * * *"
    kpi_snapshot_cron: Crontab = "30 0 * * *"
    purge_cron: Crontab = "0 4 * * *"
    # polling intervals from a tenth of a second: below, the worker spins (a core, and the
    # SQLite write lock held by heartbeats back to back)
    import_every_s: float = Field(default=300.0, ge=MIN_POLL_S, le=MAX_SECONDS, allow_inf_nan=False)
    deliver_every_s: float = Field(default=10.0, ge=MIN_POLL_S, le=MAX_SECONDS, allow_inf_nan=False)
    misfire_grace_s: int = Field(default=3600, ge=1, le=MAX_SECONDS)
    resume_window_s: float = Field(default=21600.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    leader_poll_s: float = Field(default=2.0, ge=MIN_POLL_S, le=MAX_SECONDS, allow_inf_nan=False)
    reload_check_s: float = Field(default=5.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    shutdown_timeout_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    @field_validator("metrics_host")
    @classmethod
    def _listenable(cls, value: str) -> str:
        """An address or host name to listen on ("": every interface): anything else passed
        ``check``, and the worker ran without metrics after one warning in its log."""
        if value == "" or HOST_NAME.fullmatch(value):
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("not an IP address or host name to listen on") from None
        return value


class MeasureSettings(_Section):
    attribution_window_days: int = Field(default=7, ge=1, le=MAX_DAYS)
    # each window is snapshotted daily: a few, not thousands
    snapshot_window_days: tuple[Annotated[int, Field(ge=1, le=MAX_DAYS)], ...] = Field(
        default=(7, 30, 90, 365), min_length=1, max_length=20
    )
    report_days: int = Field(default=90, ge=1, le=MAX_DAYS)
    history_days: int = Field(default=365, ge=7, le=MAX_DAYS)
    # the daily snapshot computes the days before yesterday again, this many, where they were
    # written: orders that arrive late (a nightly export imported after the snapshot ran)
    restate_days: int = Field(default=3, ge=0, le=31)
    cohort_months: int = Field(default=12, ge=1, le=36)
    min_group_size: int = Field(default=100, ge=2, le=MAX_COUNT)
    min_conversions: int = Field(default=10, ge=0, le=MAX_COUNT)
    confidence: float = Field(default=0.95, gt=0.5, lt=1, allow_inf_nan=False)
    survey_valid_days: int = Field(default=60, ge=1, le=MAX_DAYS)
    nps_min_responses: int = Field(default=30, ge=1, le=MAX_COUNT)

    @model_validator(mode="after")
    def _distinct_windows(self) -> MeasureSettings:
        windows = list(self.snapshot_window_days)
        if len(set(windows)) != len(windows):
            raise ValueError(f"snapshot_window_days must be distinct, got {windows}")
        return self


DATABASE_URL = re.compile(r"(sqlite(\+\w+)?://(/.*)?|postgres(ql)?(\+\w+)?://.+)", re.DOTALL)


def _check_database_url(value: str) -> str:
    """A URL naming SQLite or PostgreSQL (``sqlite:///recocamp.db``,
    ``postgresql://user@host/shop``): anything else (``5``, a path without a scheme, another
    database) failed every command later with exit 1 and no key named. The value is not
    repeated in the problem: it may hold a password. (The scheme only: only the store
    imports SQLAlchemy, and a URL it cannot parse is said there, naming it.)"""
    if not DATABASE_URL.fullmatch(value):
        raise error_hidden(
            "must be a SQLite or PostgreSQL URL, such as sqlite:///recocamp.db or "
            "postgresql://db.example:5432/shop"
        )
    return value


class Settings(BaseSettings):
    """Every setting, validated and frozen. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: Annotated[str, AfterValidator(_check_database_url)] = "sqlite:///recocamp.db"
    shop: ShopSettings = ShopSettings()
    ingest: IngestSettings = IngestSettings()
    demo: DemoSettings = DemoSettings()
    kpis: KpiSettings = KpiSettings()
    forecast: ForecastSettings = ForecastSettings()
    recommender: RecommenderSettings = RecommenderSettings()
    caps: CapsSettings = CapsSettings()
    campaigns: CampaignSettings = CampaignSettings()
    loyalty: LoyaltySettings = LoyaltySettings()
    esp: EspSettings = EspSettings()
    api: ApiSettings = ApiSettings()
    privacy: PrivacySettings = PrivacySettings()
    measure: MeasureSettings = MeasureSettings()
    worker: WorkerSettings = WorkerSettings()
    templates: TemplateSettings = TemplateSettings()
    # secrets: environment only (RECOCAMP_ESP_TOKEN, RECOCAMP_SIGNING_KEY,
    # RECOCAMP_SIGNING_KEYS_RETIRED, RECOCAMP_API_KEYS, RECOCAMP_WEBHOOK_SECRET)
    esp_token: SecretStr | None = None
    signing_key: SecretStr | None = None
    signing_keys_retired: SecretStr | None = None  # see retired_signing_keys
    api_keys: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    # the settings file's directory (None: no file, paths are relative to the cwd)
    _base_dir: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path | None:
        """The directory relative paths are resolved against: the settings file's, or None
        when the settings came from the defaults (then the current directory)."""
        return self._base_dir

    def locate(self, path: str | Path) -> Path:
        """``path`` as written in the settings or stored by an older version (a model's
        ``models.path``): a relative one is relative to the settings file's directory, so a
        command run from another directory finds the same files."""
        path = Path(path)
        if path.is_absolute() or self._base_dir is None:
            return path
        return self._base_dir / path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the file's values arrive as init kwargs; the environment must win over them
        return (env_settings, init_settings)

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Unset (None) is allowed: what needs a key says so (``require_signing_key``,
        ``tombstones.KeyMissing``). Set but empty or white space only is refused: it is a key
        anyone knows, so every link could be forged and every tombstone tested; a short key
        is only warned about (:func:`weak_secrets`), as one may already be in use."""
        if value is not None and not value.get_secret_value().strip():
            raise error_hidden(
                "is empty (or white space only): a key anyone knows. Set a random one "
                "(openssl rand -base64 32), or unset the variable"
            )
        return value

    @field_validator("signing_keys_retired")
    @classmethod
    def _retired_keys(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """At most :data:`MAX_RETIRED_KEYS`, none of them the signing key itself (a rotation
        that forgot to set the new key), and only beside a signing key. The problems never
        repeat a key."""
        if value is None:
            return None
        keys = retired_keys(value.get_secret_value())  # ValueError: said without the value
        if len(keys) > MAX_RETIRED_KEYS:
            raise error_hidden(
                f"holds {len(keys)} keys, at most {MAX_RETIRED_KEYS}: drop those of the "
                "oldest erasures' time only once no tombstone made under them matters"
            )
        if "signing_key" not in info.data:  # refused itself (empty): that error says it
            return value
        current = info.data.get("signing_key")
        if keys and current is None:
            raise error_hidden(
                "needs RECOCAMP_SIGNING_KEY: retired keys only check tombstones and old "
                "unsubscribe links, the signing key signs and writes"
            )
        if current is not None and current.get_secret_value().encode() in keys:
            raise error_hidden(
                "lists the signing key itself: a rotation sets RECOCAMP_SIGNING_KEY to a new "
                "key and moves the old one here"
            )
        return value

    def signing_key_bytes(self) -> bytes | None:
        """``RECOCAMP_SIGNING_KEY`` as the HMAC key of link tokens and erasure tombstones (the
        one place it is read); None when it is not set. The one key that signs a token or
        writes a tombstone: never a retired one."""
        key = self.signing_key
        return key.get_secret_value().encode() if key is not None else None

    def retired_signing_keys(self) -> tuple[bytes, ...]:
        """``RECOCAMP_SIGNING_KEYS_RETIRED``: keys the signing key replaced, kept to check
        what was made under them (tombstones, unsubscribe links of old e-mails), never to
        sign or write (see :func:`retired_keys` for the format)."""
        value = self.signing_keys_retired
        return () if value is None else retired_keys(value.get_secret_value())

    def signing_keys(self) -> tuple[bytes, ...] | None:
        """The signing key first, then the retired ones: what a tombstone or a link may have
        been made under. None when no signing key is set."""
        current = self.signing_key_bytes()
        return None if current is None else (current, *self.retired_signing_keys())

    def require_signing_key(self) -> bytes:
        """The signing key, or a ConfigError: sending needs it for unsubscribe links."""
        key = self.signing_key_bytes()
        if key is None:
            raise ConfigError(
                Path("settings.toml"),
                [
                    Problem(
                        "sending needs a secret for unsubscribe links: set RECOCAMP_SIGNING_KEY",
                        key="signing_key",
                    )
                ],
            )
        return key


def retired_keys(text: str) -> tuple[bytes, ...]:
    """The keys of ``RECOCAMP_SIGNING_KEYS_RETIRED``: separated by white space (a space, a
    line break), or, for keys that hold white space themselves, a JSON list of strings
    (``["old key one", "old-key-2"]``). Each key as ``RECOCAMP_SIGNING_KEY`` was written,
    byte for byte; duplicates once. A list that is not, or that lists an empty or white-space
    key (refused as the signing key is: ``[" "]`` verified links sealed under a key anyone
    knows): a problem that does not repeat it."""
    if text.lstrip().startswith("["):
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = None
        if not isinstance(loaded, list) or not all(isinstance(k, str) for k in loaded):
            raise error_hidden(
                "starts with '[' but is not a JSON list of strings (keys separated by white "
                "space, or a JSON list for keys that hold white space)"
            )
        if not all(key.strip() for key in loaded):
            raise error_hidden(
                "lists an empty key (or white space only): a key anyone knows, whose links "
                "would still be taken; drop it from the list"
            )
        keys = loaded
    else:
        keys = text.split()
    return tuple(dict.fromkeys(key.encode() for key in keys))


def weak_secrets(settings: Settings) -> list[str]:
    """A warning per secret shorter than :data:`MIN_SECRET_BYTES`, naming the setting and
    its length, never its value. ``signing_key``: anyone holding one link can try keys
    offline until its HMAC matches, then forge every link (show, export, erase a customer's
    data) and test guesses against the tombstones; ``webhook_secret``: guessed online, it
    lets anyone suppress addresses. Not refused: see the module's docstring (a rotation)."""
    found = []
    key = settings.signing_key_bytes()
    if key is not None and len(key) < MIN_SECRET_BYTES:
        found.append(
            f"signing_key (RECOCAMP_SIGNING_KEY) is {len(key)} bytes, shorter than "
            f"{MIN_SECRET_BYTES}: one mailed link lets anyone find it offline and forge "
            "every link. Rotate it: move it to RECOCAMP_SIGNING_KEYS_RETIRED and set a new "
            "key (openssl rand -base64 32); see the README's Settings"
        )
    hook = settings.webhook_secret
    if hook is not None and len(hook.get_secret_value().encode()) < MIN_SECRET_BYTES:
        length = len(hook.get_secret_value().encode())
        found.append(
            f"webhook_secret (RECOCAMP_WEBHOOK_SECRET) is {length} bytes, shorter than "
            f"{MIN_SECRET_BYTES}: it can be guessed. Set a new one (openssl rand -base64 32) "
            "at the provider and here at once"
        )
    return found


# Settings' fields as a plain model, for checking the file's types (config_files.validated):
# strict validation of a BaseSettings does not reach into its sections
_FILE = create_model(
    "SettingsFile",
    __config__=ConfigDict(extra="forbid"),
    **{name: (field.annotation, field) for name, field in Settings.model_fields.items()},  # type: ignore[call-overload]
)


def settings_path(explicit: Path | None = None) -> Path | None:
    """The settings file to read: explicit, ``$RECOCAMP_SETTINGS``, ``./settings.toml``."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get("RECOCAMP_SETTINGS")
    if from_env:
        return Path(from_env)
    return DEFAULT_FILE if DEFAULT_FILE.exists() else None


def load_settings(path: Path | None = None) -> Settings:
    """Read, merge and validate settings; every problem is reported at once."""
    path = settings_path(path)
    data, text = read_toml(path) if path is not None else ({}, "")
    where = path if path is not None else Path("<defaults>")
    _refuse_secrets_in_file(where, data, text)
    _refuse_env_values_that_are_not_json(where)
    settings = validated(where, text, data, _FILE, lambda: Settings(**data), ENV_PREFIX)
    if path is None:
        _refuse_files_as_folders(where, text, settings)
        return settings
    result = anchored(settings, Path(os.path.abspath(path)).parent)  # "a/../b": b, as written
    _refuse_a_moved_database(path, text, settings.database_url, result.database_url)
    _refuse_files_as_folders(path, text, result)
    return result


def _refuse_env_values_that_are_not_json(where: Path) -> None:
    """pydantic-settings reads the environment value of a list or a table (a section, the
    loyalty tiers, ``cors_origins``) as JSON, and raised its own SettingsError, a traceback
    naming neither the variable nor the value, for one that is not
    (``RECOCAMP_API__CORS_ORIGINS=https://shop.example``): the key's problem instead."""
    found = []
    for name, raw in sorted(os.environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        loc = name[len(ENV_PREFIX) :].lower().split("__")
        if not _is_list_or_table(loc):
            continue
        try:
            json.loads(raw)
        except ValueError:
            message = (
                'must be JSON in the environment: a list as ["a", "b"] or [7, 30], a table as '
                f'{{"key": "value"}} (from environment variable {name})'
            )
            found.append(Problem(message, key=".".join(loc), value=raw))
    if found:
        raise ConfigError(where, found)


def _is_list_or_table(loc: list[str]) -> bool:
    """Whether the key at ``loc`` (a section, or a section's key) holds a list or a table."""
    fields: dict[str, Any] = dict(Settings.model_fields)
    annotation: Any = None
    for part in loc:
        field = fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        fields = dict(annotation.model_fields) if _is_model(annotation) else {}
    return _is_model(annotation) or get_origin(annotation) in (list, tuple, dict, set, frozenset)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _refuse_files_as_folders(path: Path, text: str, settings: Settings) -> None:
    found = files_as_folders(settings, text)
    if found:
        raise ConfigError(path, found)


def _refuse_a_moved_database(path: Path, text: str, written: str, anchored_url: str) -> None:
    """Before this version a relative SQLite file was relative to the current directory. A
    deployment that ran from elsewhere would now open a new, empty database beside the
    settings file while its data sits where it was: refuse, naming both files."""
    before, after = _sqlite_file(written), _sqlite_file(anchored_url)
    if written == anchored_url or before is None or after is None:
        return
    old, new = Path(before[1]), Path(after[1])
    if new.exists() or not old.is_file() or old.resolve() == new.resolve():
        return
    message = (
        f"the SQLite file {str(old)!r} is read relative to the settings file now, as {new}, "
        f"which does not exist, while {old.resolve()} does (relative to the current "
        "directory, where earlier versions looked): move it there or write an absolute path"
    )
    line = line_of(text, ("database_url",))
    raise ConfigError(path, [Problem(message, key="database_url", line=line)])


def anchored(settings: Settings, base: Path) -> Settings:
    """``settings`` with every relative filesystem path (each section's ``Path`` settings
    and a SQLite database file) made absolute against ``base``, the settings file's
    directory: run from elsewhere (``--settings ../settings.toml``), a command must read and
    write the same database, models and folders, or an erasure would miss the saved models."""
    update: dict[str, Any] = {"database_url": _anchored_url(settings.database_url, base)}
    for name in type(settings).model_fields:
        section = getattr(settings, name)
        if isinstance(section, BaseModel):
            paths = {
                field: base / value
                for field in type(section).model_fields
                if isinstance(value := getattr(section, field), Path) and not value.is_absolute()
            }
            if paths:
                update[name] = section.model_copy(update=paths)
    result = settings.model_copy(update=update)
    result._base_dir = base
    return result


def _anchored_url(url: str, base: Path) -> str:
    """A SQLite URL's relative database file made absolute; an in-memory database
    (``sqlite://``, ``:memory:``), a ``file:`` URI and every other database are left alone."""
    parts = _sqlite_file(url)
    if parts is None or Path(parts[1]).is_absolute():
        return url
    head, database, query = parts
    return head + quote(str(base / database), safe="/ :") + query


def _sqlite_file(url: str) -> tuple[str, str, str] | None:
    """A SQLite URL as (``sqlite[+driver]:///``, its database file, ``?query`` or ""), the
    file %-decoded as SQLAlchemy reads it; None for an in-memory database, a ``file:`` URI
    or another database. Parsed here, not by SQLAlchemy: only the store imports it."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.split("+")[0] != "sqlite" or not rest.startswith("/"):
        return None
    path, mark, query = rest[1:].partition("?")
    database = unquote(path)
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{scheme}:///", database, mark + query


def _refuse_secrets_in_file(path: Path, data: dict[str, Any], text: str) -> None:
    found = [
        Problem(
            f"secrets are read from the environment only: set {ENV_PREFIX}{key.upper()}",
            key=key,
            line=line_of(text, (key,)),
        )
        for key in SECRET_KEYS
        if key in data
    ]
    if found:
        raise ConfigError(path, found)
