"""``campaigns/*.toml`` → validated :class:`Campaign` objects; every problem of every file.

One campaign per file; the file's stem must equal its ``name``. Validation happens in two
steps: the file against the schema (pydantic, unknown keys refused), then cross-references
against the shop (templates exist, cap overrides only stricter unless
``caps.campaigns_may_relax``, loyalty tiers exist). Each problem names the file, the dotted
key, its line and the bad value, like ``settings.toml`` errors.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from recocamp.campaigns.caps import CapPolicy, stricter
from recocamp.campaigns.segments import RFM_SEGMENTS
from recocamp.config_files import error_at, line_of, read_toml, validated
from recocamp.domain import MAX_COUNT, MAX_DAYS, RISK_CUTS, ConsentBasis, Locale, composed_text
from recocamp.errors import ConfigError, Problem
from recocamp.recommender.ranking import Mode
from recocamp.settings import (
    Settings,
    TimeZoneName,
    cron_trigger,
    fires_too_often,
    never_fires,
)

DESCRIPTION_MAX = 1000  # characters: a line or two for people, and for templates to print
RFM_NAMES = (*(name for name, _, _ in RFM_SEGMENTS), "others")
RISK_TIERS = ("low", "medium", "high")  # forecast.outlook.risk_tier's tiers
FORECAST_KEYS = (
    "churn_risk",
    "p_active_below",
    "overdue_ratio_at_least",
    "lifetime_value_top_share",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cron(expression: str) -> str:
    try:
        cron_trigger(expression)
    except ValueError as exc:
        raise ValueError(f"not a cron expression (minute hour day month weekday): {exc}") from None
    if (reason := never_fires(expression)) is not None:
        raise ValueError(reason)
    if (reason := fires_too_often(expression, CAMPAIGN_EVERY_MIN)) is not None:
        raise ValueError(f"{reason}; {_RERUN}")
    return expression


# a run plans the whole audience of its day (``run.run_key``) and a customer gets one e-mail
# of a campaign per day: a run every minute re-plans the customer base 1,440 times a day to
# reach the few customers newly matched
CAMPAIGN_EVERY_MIN = timedelta(hours=1)
_RERUN = (
    "each run plans the whole audience again, and a later run the same day sends only to "
    "customers newly matched"
)


class Schedule(_Strict):
    cron: Annotated[str, AfterValidator(_cron)]
    time_zone: TimeZoneName = "Europe/Berlin"  # unset in the file: the shop's (load_all)

    def trigger(self) -> CronTrigger:
        return cron_trigger(self.cron, timezone=self.time_zone)

    @property
    def zone(self) -> ZoneInfo:
        """The zone the schedule fires in, and so the zone of a run's day (``run.run_key``)."""
        return ZoneInfo(self.time_zone)


# Upper bounds: a day count or a cap beyond these is a typo, and an unbounded one passes the
# schema, then overflows at run time (a timedelta of 99,999,999,999 days, an SQL integer).
# Days and counts: domain.MAX_DAYS and MAX_COUNT, the bounds of the settings too.
MAX_PRICE = 1_000_000_000.0  # the import's unit price bound (±10⁹)
MAX_WEIGHT = 1_000_000.0  # variant weights are relative; a sum of huge ones is not finite
Days = Annotated[int, Field(ge=0, le=MAX_DAYS)]
# an item id as files and the API store it: composed (``domain.composed``); one pasted from
# another system's export decomposed ('To' + U+0308 + 'pfchen') matched no stored id
ItemId = Annotated[str, BeforeValidator(composed_text)]


class Audience(_Strict):
    """Every rule given must hold (AND); leave a rule out to not filter on it."""

    lapsed_days: tuple[Days, Days] | None = None  # last order in [min, max) days ago
    min_orders: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    max_orders: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    min_spend: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    max_spend: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    categories: tuple[str, ...] = ()  # bought in any of these
    rfm_segments: tuple[Literal[RFM_NAMES], ...] = ()  # type: ignore[valid-type]
    loyalty_tiers: tuple[str, ...] = ()
    birthday_today: bool = False
    replenishment_due: bool = False
    not_contacted_days: int | None = Field(default=None, ge=1, le=MAX_DAYS)
    # the live stored forecast (see campaigns.predictive): a customer without a row in it goes
    # by fallback_lapsed_days, and matches no forecast key without it
    churn_risk: tuple[Literal[RISK_TIERS], ...] = ()  # type: ignore[valid-type]
    p_active_below: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    # days since the last purchase day per gap, a gap being a day or more: past MAX_DAYS
    # (a century overdue for a daily buyer) nobody matches, so a larger value is a typo
    overdue_ratio_at_least: float | None = Field(
        default=None, ge=0, le=MAX_DAYS, allow_inf_nan=False
    )
    lifetime_value_top_share: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    # replaces the forecast keys when no forecast is live, and for customers who objected to
    # profiling: last order in [min, max) days ago
    fallback_lapsed_days: tuple[Days, Days] | None = None

    @field_validator("fallback_lapsed_days")
    @classmethod
    def _fallback(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError(f"must be [min, max) with 0 <= min < max, got {list(value)}")
        return value

    @property
    def uses_forecast(self) -> bool:
        """Whether any forecast key is given (the campaign's trigger is predictive)."""
        return any(getattr(self, key) not in (None, ()) for key in FORECAST_KEYS)

    @field_validator("lapsed_days")
    @classmethod
    def _lapsed(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError(
                f"lapsed_days must be [min, max) with 0 <= min < max, got {list(value)}"
            )
        return value

    @field_validator("max_orders", "max_spend")
    @classmethod
    def _at_least_min(cls, value: float | None, info: ValidationInfo) -> float | None:
        """Checked at the maximum (the key whose line is reported), against its minimum."""
        return _not_below(value, info, "min_" + str(info.field_name).removeprefix("max_"))


def _not_below(value: float | None, info: ValidationInfo, low_key: str) -> float | None:
    """``value`` (a maximum) unless the minimum given with it is larger."""
    low = info.data.get(low_key)
    if value is not None and low is not None and low > value:
        raise ValueError(f"{low_key} is larger than {info.field_name} ({low_key} = {low})")
    return value


class OfferRules(_Strict):
    mode: Mode = Mode.MIXED
    items: int = Field(default=4, ge=1, le=20)
    categories: tuple[str, ...] = ()
    min_price: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    max_price: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    exclude_items: tuple[ItemId, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    discount_percent: float | None = Field(default=None, gt=0, le=90)

    @field_validator("max_price")
    @classmethod
    def _price_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        """A range no item can fall in offers nothing: a typo, not a campaign."""
        return _not_below(value, info, "min_price")

    @field_validator("exclude_categories")
    @classmethod
    def _not_offered(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """A category both offered and excluded: with it alone in ``categories`` every e-mail
        is ``no_offer``, else the category the marketer meant is dropped unsaid."""
        offered = set(info.data.get("categories") or ())
        for n, category in enumerate(value):
            if category in offered:
                message = (
                    "also in categories, which offers only those: a category is offered or "
                    "excluded, not both"
                )
                raise error_at(message, (n,), category)
        return value


def _not_blank(text: str) -> str:
    """A subject line must say something: a blank one passed ``check`` and every e-mail went
    out without a subject (or was refused by the provider)."""
    if not text.strip():
        raise ValueError("a subject must not be empty")
    return text


# characters of a subject line as written: the line travels in each of its e-mails' outbox
# rows (rendered at delivery, ``domain.BodyTemplate``), and a file of 1 MiB held a subject
# of a few words after a comment of 900 kB, stored again for every customer of every run
SUBJECT_WRITTEN_MAX = 2000
Subject = Annotated[str, Field(max_length=SUBJECT_WRITTEN_MAX), AfterValidator(_not_blank)]


class Template(_Strict):
    subject: dict[Locale, Subject] = Field(min_length=1)
    html: str
    text: str


class Variant(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    weight: float = Field(gt=0, le=MAX_WEIGHT, allow_inf_nan=False)  # summed: finite
    subject: dict[Locale, Subject] | None = None
    html: str | None = None
    text: str | None = None


def _some_mail(value: int | None) -> int | None:
    """A campaign's cap of 0 mails nobody, and records ``capped_24h`` (``capped_7d``) for
    every customer, none of whom was mailed: a false reason for a campaign switched off."""
    if value == 0:
        raise ValueError("0 lets the campaign mail nobody; to stop it, set enabled = false")
    return value


MailCap = Annotated[int | None, Field(ge=0, le=MAX_COUNT), AfterValidator(_some_mail)]


class CapOverrides(_Strict):
    max_per_24h: MailCap = None
    max_per_7d: MailCap = None
    cooldown_days: int | None = Field(default=None, ge=0, le=MAX_DAYS)


class Campaign(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    # templates read it (``campaign.description``), but check renders them with a sample: a
    # description longer than the output bound would fail every e-mail of the run
    description: str = Field(default="", max_length=DESCRIPTION_MAX)
    enabled: bool = True
    # "offers": personal offers (the default); "nps": a Net Promoter Score survey, a mail with
    # 0–10 answer links and no offers (its answers are measured in the report)
    type: Literal["offers", "nps"] = "offers"
    # at least one: a campaign that may mail nobody is a mistake, not a setting
    legal_basis: tuple[Literal["double_opt_in", "existing_customer"], ...] = Field(
        default=("double_opt_in",), min_length=1
    )
    schedule: Schedule
    audience: Audience = Audience()
    offer: OfferRules = OfferRules()
    template: Template
    caps: CapOverrides = CapOverrides()
    holdout_percent: float = Field(default=10.0, ge=0, le=50)
    variants: tuple[Variant, ...] = ()

    @field_validator("legal_basis")
    @classmethod
    def _someone(cls, bases: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """A survey offers nothing, and the existing-customer exception (UWG §7(3)) covers
        only offers like what the customer bought (``planner._consented``): a survey for
        existing customers alone recorded ``no_consent`` for every customer, run after run."""
        if info.data.get("type") == "nps" and ConsentBasis.DOUBLE_OPT_IN.value not in bases:
            raise ValueError(
                'a survey (type = "nps") mails nobody on this basis: the existing-customer '
                "exception (UWG §7(3)) covers offers like what was bought, not a survey; add "
                "double_opt_in"
            )
        return bases

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
        """Reported at the second variant of a name (its line), naming the first."""
        first: dict[str, int] = {}
        for n, variant in enumerate(variants):
            if variant.name in first:
                raise error_at(
                    f"variant names must be unique: 'variants.{first[variant.name]}.name' "
                    "has it too",
                    (n, "name"),
                    variant.name,
                )
            first[variant.name] = n
        return variants

    @property
    def is_survey(self) -> bool:
        return self.type == "nps"

    def allows(self, basis: ConsentBasis) -> bool:
        return basis.value in self.legal_basis

    def policy(self, defaults: CapPolicy) -> CapPolicy:
        return stricter(defaults, self.caps.model_dump(exclude_none=True))[0]


def caps_defaults(settings: Settings) -> CapPolicy:
    """The shop's cap policy, which every campaign's own ``[caps]`` starts from."""
    return CapPolicy.from_settings(settings.caps)


def load(path: Path) -> tuple[Campaign, str]:
    """One file against the schema; returns the campaign and the file's text."""
    data, text = read_toml(path)
    campaign = validated(path, text, data, Campaign, lambda: Campaign(**data))
    if campaign.name != path.stem:
        line = line_of(text, ("name",))
        raise ConfigError(
            path,
            [
                Problem(
                    f"must equal the file name {path.stem!r}",
                    key="name",
                    line=line,
                    value=campaign.name,
                )
            ],
        )
    return campaign, text


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name the system refuses (longer than it allows) is none."""
    try:
        return path.is_file()
    except OSError:  # ENAMETOOLONG: is_file() raises it
        return False


# the suffix each part's template must have: a template is escaped by its suffix (``.html``
# in any case, see ``render.is_html``), so an HTML part from a text template printed customer
# data as markup, and a text part from an HTML template was that template's markup
PART_KINDS = {
    "html": (".html", "an HTML template (.html): only those escape what they print"),
    "text": (".txt", "a text template (.txt): the text part would be another file's markup"),
}


def cross_check(
    campaign: Campaign, text: str, path: Path, settings: Settings, templates: Path
) -> list[Problem]:
    """References to things outside the file: templates, tiers, cap policy."""
    found: list[Problem] = []
    names: list[tuple[str, str | None]] = [
        ("template.html", campaign.template.html),
        ("template.text", campaign.template.text),
    ]
    for n, variant in enumerate(campaign.variants):
        names += [(f"variants.{n}.html", variant.html), (f"variants.{n}.text", variant.text)]
    for key, name in names:
        if name is None:
            continue
        line = line_of(text, tuple(key.split(".")))
        if not _is_file(templates / name):
            message = f"template not found in {templates}/"
            found.append(Problem(message, key=key, line=line, value=name))
        suffix, kind = PART_KINDS[key.rpartition(".")[2]]
        if not name.lower().endswith(suffix):
            found.append(Problem(f"not {kind}", key=key, line=line, value=name))
    found += _fallback_problems(campaign, text)
    found += never_matching(campaign, text)
    tiers = {tier.name for tier in settings.loyalty.tiers}
    for tier in campaign.audience.loyalty_tiers:
        if tier not in tiers:
            known = ", ".join(sorted(tiers))
            line = line_of(text, ("audience", "loyalty_tiers"))
            found.append(
                Problem(
                    f"unknown loyalty tier (settings has {known})",
                    key="audience.loyalty_tiers",
                    line=line,
                    value=tier,
                )
            )
    _, relaxing = stricter(caps_defaults(settings), campaign.caps.model_dump(exclude_none=True))
    if relaxing and not settings.caps.campaigns_may_relax:
        for key in relaxing:
            value = getattr(campaign.caps, key, None)
            found.append(
                Problem(
                    "may only be stricter than [caps] in settings "
                    "(set caps.campaigns_may_relax = true to allow)",
                    key=f"caps.{key}",
                    line=line_of(text, ("caps", key)),
                    value=value,
                )
            )
    return found


def _fallback_problems(campaign: Campaign, text: str) -> list[Problem]:
    """A fallback rule without a forecast key would never apply: the marketer meant
    ``lapsed_days``, or forgot the forecast keys."""
    audience = campaign.audience
    if audience.fallback_lapsed_days is None or audience.uses_forecast:
        return []
    message = (
        "is used instead of the forecast keys when no forecast is live, but none is given "
        f"({', '.join(FORECAST_KEYS)}); for a plain rule use lapsed_days"
    )
    key = ("audience", "fallback_lapsed_days")
    value = list(audience.fallback_lapsed_days)
    return [Problem(message, key=".".join(key), line=line_of(text, key), value=value)]


# the lowest p_active of each churn risk tier (forecast.outlook.risk_tiers)
TIER_FLOOR = {"high": 0.0, "medium": RISK_CUTS[0], "low": RISK_CUTS[1]}


def never_matching(campaign: Campaign, text: str) -> list[Problem]:
    """Audience rules no customer can meet together, whatever the data: each key passes on
    its own, and the campaign matched nobody, run after run, with a reason that blamed the
    customers. Refused, as ``min_orders`` above ``max_orders`` is, at the second key's line."""
    audience = campaign.audience
    found = []
    below = audience.p_active_below
    if below is not None and audience.churn_risk:
        floor = min(TIER_FLOOR[tier] for tier in audience.churn_risk)
        if below <= floor:
            tiers = ", ".join(audience.churn_risk)
            message = (
                f"no customer can match: churn_risk {tiers} is p_active {floor:.4g} or more, "
                "and this asks for less"
            )
            key = ("audience", "p_active_below")
            found.append(Problem(message, key=".".join(key), line=line_of(text, key), value=below))
    most = audience.max_orders
    if audience.replenishment_due and most is not None and most < 2:
        message = (
            "no customer can match: replenishment_due needs an item bought in 2 orders or more"
        )
        key = ("audience", "max_orders")
        found.append(Problem(message, key=".".join(key), line=line_of(text, key), value=most))
    elif most == 0 and (needs := _needing_an_order(audience)):
        message = f"no customer can match: {', '.join(needs)} needs an order, and this allows none"
        key = ("audience", "max_orders")
        found.append(Problem(message, key=".".join(key), line=line_of(text, key), value=most))
    return found


def _needing_an_order(audience: Audience) -> list[str]:
    """The rules only a customer with an order can meet: a last order, spend above 0, a
    category bought, an RFM score, a forecast row or the fallback's last order."""
    rules = {
        "lapsed_days": audience.lapsed_days is not None,
        "min_spend": bool(audience.min_spend),
        "categories": bool(audience.categories),
        "rfm_segments": bool(audience.rfm_segments),
        "replenishment_due": audience.replenishment_due,
        **{key: getattr(audience, key) not in (None, ()) for key in FORECAST_KEYS},
    }
    return [key for key, given in rules.items() if given]


def in_shop_zone(campaign: Campaign, shop_zone: str) -> Campaign:
    """``campaign`` with its schedule in the shop's zone (``[shop] time_zone``) when its file
    names none: a UK shop's ``cron = "0 10 * * *"`` fires at 10:00 in London, not at the
    model's default Europe/Berlin (09:00 there), and the run's day is London's."""
    schedule = campaign.schedule
    if "time_zone" in schedule.model_fields_set:
        return campaign
    return campaign.model_copy(
        update={"schedule": schedule.model_copy(update={"time_zone": shop_zone})}
    )


def campaign_paths(directory: Path) -> list[Path]:
    """The campaign files of ``directory``, sorted: its ``*.toml`` files but those whose name
    starts with a dot (hidden: macOS's ``._x.toml``, an editor's ``.#x.toml`` lock)."""
    return [p for p in sorted(directory.glob("*.toml")) if not p.name.startswith(".")]


def load_all(
    directory: Path, settings: Settings, templates: Path
) -> tuple[list[Campaign], list[ConfigError]]:
    """Every campaign file, and every problem of every broken one (nothing stops early).
    A name starting with a dot is no campaign file: macOS's ``._x.toml`` (binary metadata it
    writes beside a copied file) and an editor's ``.#x.toml`` lock were each a broken file."""
    campaigns: list[Campaign] = []
    failures: list[ConfigError] = []
    seen: dict[str, Path] = {}
    for path in campaign_paths(directory):
        try:
            campaign, text = load(path)
        except ConfigError as exc:
            failures.append(exc)
            continue
        campaign = in_shop_zone(campaign, settings.shop.time_zone)
        found = cross_check(campaign, text, path, settings, templates)
        if campaign.name in seen:
            found.append(
                Problem(
                    f"the same name is used by {seen[campaign.name]}",
                    key="name",
                    line=line_of(text, ("name",)),
                    value=campaign.name,
                )
            )
        seen[campaign.name] = path
        if found:
            failures.append(ConfigError(path, found))
        else:
            campaigns.append(campaign)
    return campaigns, failures
