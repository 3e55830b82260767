"""Campaign files: the shipped examples pass; one broken file per error class says where."""

from __future__ import annotations

import tomllib
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from recocamp.campaigns.caps import CapPolicy
from recocamp.campaigns.check import Catalogue, catalogue_problems
from recocamp.campaigns.files import Campaign, load_all
from recocamp.campaigns.planner import Context, CustomerView, offers_for
from recocamp.campaigns.segments import History
from recocamp.config_files import TOML_BYTES_MAX
from recocamp.domain import ConsentBasis, Customer, Item
from recocamp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GOOD = """name = "{name}"
description = "test"
legal_basis = ["double_opt_in"]
holdout_percent = 10

[schedule]
cron = "0 10 * * TUE"
time_zone = "Europe/Berlin"

[audience]
lapsed_days = [60, 180]

[offer]
mode = "mixed"
items = 4

[template]
subject = {{ en = "Hi" }}
html = "winback.html"
text = "winback.txt"
"""


def test_shipped_campaigns_are_valid() -> None:
    campaigns, failures = load_all(ROOT / "campaigns", Settings(), ROOT / "templates")
    assert failures == []
    assert {c.name for c in campaigns} == {
        "winback",
        "cross_sell",
        "replenish",
        "birthday",
        "vip_tier",
        "nps",
    }


def test_a_schedule_without_a_zone_runs_in_the_shops_zone(tmp_path: Path) -> None:
    """A UK shop's campaign that names no zone fired at 10:00 Berlin time (09:00 in London)
    and counted its run's day in Berlin: the model's default, not the shop's."""
    (tmp_path / "local.toml").write_text(
        GOOD.format(name="local").replace('time_zone = "Europe/Berlin"\n', ""), encoding="utf-8"
    )
    (tmp_path / "named.toml").write_text(
        GOOD.format(name="named").replace("Europe/Berlin", "Asia/Tokyo"), encoding="utf-8"
    )
    london = Settings(shop={"time_zone": "Europe/London"})
    campaigns, failures = load_all(tmp_path, london, ROOT / "templates")
    assert failures == []
    zones = {c.name: c.schedule.zone.key for c in campaigns}
    assert zones == {"local": "Europe/London", "named": "Asia/Tokyo"}
    trigger = next(c for c in campaigns if c.name == "local").schedule.trigger()
    after = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)  # a Monday; GOOD fires on Tuesdays at 10:00
    assert trigger.get_next_fire_time(None, after) == datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


def check(tmp_path: Path, text: str, name: str = "broken", settings: Settings | None = None) -> str:
    (tmp_path / f"{name}.toml").write_text(text, encoding="utf-8")
    campaigns, failures = load_all(tmp_path, settings or Settings(), ROOT / "templates")
    assert not campaigns and len(failures) == 1
    return str(failures[0])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("items = 4", "items = 4\n", None),  # control: the template is valid
        (
            'cron = "0 10 * * TUE"',
            'cron = "61 10 * * TUE"',
            ["key 'schedule.cron'", "line 7", "61 10 * * TUE"],
        ),
        (
            'time_zone = "Europe/Berlin"',
            'time_zone = "Mars/Base"',
            ["key 'schedule.time_zone'", "line 8", "Mars/Base"],
        ),
        # a region is a folder of the zone database (IsADirectoryError), a name longer than
        # the system allows another OSError: check printed a traceback, no worker started
        (
            'time_zone = "Europe/Berlin"',
            'time_zone = "Europe"',
            ["key 'schedule.time_zone'", "line 8", "unknown IANA time zone", "'Europe'"],
        ),
        (
            'time_zone = "Europe/Berlin"',
            f'time_zone = "{"Z" * 5000}"',
            ["key 'schedule.time_zone'", "line 8", "unknown IANA time zone", "(5,000 characters)"],
        ),
        ('mode = "mixed"', 'mode = "surprise"', ["key 'offer.mode'", "line 14", "surprise"]),
        ("items = 4", "items = 0", ["key 'offer.items'", "line 15"]),
        (
            "items = 4",
            "itemz = 4",
            ["key 'offer.itemz'", "Extra inputs are not permitted", "line 15"],
        ),
        ("holdout_percent = 10", "holdout_percent = 80", ["key 'holdout_percent'", "line 4", "80"]),
        ("lapsed_days = [60, 180]", "lapsed_days = [180, 60]", ["lapsed_days must be [min, max)"]),
        (
            'legal_basis = ["double_opt_in"]',
            'legal_basis = ["none"]',
            ["key 'legal_basis.0'", "line 3", "'none'"],
        ),
        (
            'html = "winback.html"',
            'html = "nope.html"',
            ["key 'template.html'", "line 19", "template not found", "nope.html"],
        ),
        # the HTML part from a text template was rendered unescaped (customer data as markup),
        # the text part from an HTML template was markup and entities in the text part
        (
            'html = "winback.html"',
            'html = "winback.txt"',
            ["key 'template.html'", "line 19", "not an HTML template (.html)", "winback.txt"],
        ),
        (
            'text = "winback.txt"',
            'text = "email.css"',
            ["key 'template.text'", "line 20", "not a text template (.txt)", "email.css"],
        ),
        (
            'text = "winback.txt"',
            'text = "winback.txt"\n\n[[variants]]\nname = "b"\nweight = 1\ntext = "winback.html"',
            ["key 'variants.0.text'", "line 25", "not a text template (.txt)", "winback.html"],
        ),
        # a name longer than the system allows (ENAMETOOLONG) is not found either, cut
        (
            'html = "winback.html"',
            f'html = "{"n" * 5000}.html"',
            ["key 'template.html'", "line 19", "template not found", f"'{'n' * 200}… (5,005"],
        ),
        (
            "[audience]",
            '[audience]\nrfm_segments = ["vips"]',
            ["key 'audience.rfm_segments.0'", "'vips'"],
        ),
        (
            "[audience]",
            '[audience]\nloyalty_tiers = ["diamond"]',
            ["unknown loyalty tier", "diamond", "line 11"],
        ),
        (
            "[offer]",
            "[caps]\nmax_per_24h = 5\n\n[offer]",
            ["key 'caps.max_per_24h'", "may only be stricter", "line 14"],
        ),
        ('name = "{name}"', 'name = "other"', ["key 'name'", "must equal the file name 'broken'"]),
        ("[offer]", "[offer\n", ["not valid TOML", "line 13"]),
        # a cap of 0 mails nobody and recorded capped_24h for every customer, none mailed
        (
            "[offer]",
            "[caps]\nmax_per_24h = 0\nmax_per_7d = 0\n\n[offer]",
            [
                "line 14, key 'caps.max_per_24h': Value error, 0 lets the campaign mail nobody",
                "set enabled = false (value: 0)",
                "line 15, key 'caps.max_per_7d'",
            ],
        ),
        (
            "[offer]",
            "[caps]\nmax_per_24h = -1\n\n[offer]",
            ["line 14, key 'caps.max_per_24h'", "greater than or equal to 0", "(value: -1)"],
        ),
        (
            "[offer]",
            "[caps]\ncooldown_days = 99999999999\n\n[offer]",
            ["key 'caps.cooldown_days'", "line 14", "99999999999", "less than or equal to 36500"],
        ),
        (
            "[audience]",
            "[audience]\nnot_contacted_days = 99999999999",
            ["key 'audience.not_contacted_days'", "line 11", "99999999999"],
        ),
        (
            "lapsed_days = [60, 180]",
            "lapsed_days = [60, 99999999999]",
            ["key 'audience.lapsed_days.1'", "line 11", "99999999999"],
        ),
        (
            "items = 4",
            "items = 4\nmin_price = 100\nmax_price = 1",
            ["line 17, key 'offer.max_price'", "min_price is larger", "(value: 1)"],
        ),
        ("items = 4", "items = 4\nmax_price = inf", ["key 'offer.max_price'", "line 16", "inf"]),
        # a category both offered and excluded: every customer's e-mail was no_offer, or the
        # category the marketer meant was dropped without a word
        (
            "items = 4",
            'items = 4\ncategories = ["kitchen", "toys"]\nexclude_categories = ["tea", "kitchen"]',
            [
                "line 17, key 'offer.exclude_categories.1'",
                "also in categories, which offers only those",
                "(value: 'kitchen')",
            ],
        ),
        (
            "items = 4",
            'items = 4\ncategories = ["kitchen"]\nexclude_categories = ["garden"]',
            None,
        ),
        (
            "lapsed_days = [60, 180]",
            "lapsed_days = [60, 180]\nmin_spend = inf",
            ["key 'audience.min_spend'", "line 12", "(value: inf)", "finite number"],
        ),
        (
            "lapsed_days = [60, 180]",
            "lapsed_days = [60, 180]\nmax_spend = 1e300",
            ["key 'audience.max_spend'", "line 12", "1e+300", "less than or equal to 1000000000"],
        ),
        ('["double_opt_in"]', "[]", ["key 'legal_basis'", "line 3", "at least 1 item"]),
        (
            "[template]",
            '[[variants]]\nname = "a"\nweight = 1e308\n\n[template]',
            ["key 'variants.0.weight'", "line 19", "less than or equal to 1000000"],
        ),
        # TOML types, not pydantic's lax reading: "10" is not 10, 1 not true, 4.0 not 4
        (
            "holdout_percent = 10",
            'holdout_percent = "10"',
            ["line 4, key 'holdout_percent': must be a number, not a string", "(value: '10')"],
        ),
        (
            "items = 4",
            "items = 4.0",
            ["line 15, key 'offer.items': must be a whole number", "(value: 4.0)"],
        ),
        (
            "lapsed_days = [60, 180]",
            'lapsed_days = ["60", 180]',
            ["line 11, key 'audience.lapsed_days.0': must be a whole number", "(value: '60')"],
        ),
        (
            'description = "test"',
            "enabled = 1",
            ["line 2, key 'enabled': must be true or false, not a number", "(value: 1)"],
        ),
        (
            "[template]",
            '[[variants]]\nname = "a"\nweight = "2"\n\n[template]',
            ["line 19, key 'variants.0.weight': must be a number", "(value: '2')"],
        ),
        # templates print it, but check renders them with a sample's: one longer than the
        # output bound passed check and failed every e-mail of the run; its value is cut
        (
            'description = "test"',
            f'description = "{"d" * 1_000_001}"',
            [
                "line 2, key 'description': String should have at most 1000 characters",
                f"(value: '{'d' * 200}… (1,000,001 characters)')",
            ],
        ),
        # a schedule that can never fire
        (
            'cron = "0 10 * * TUE"',
            'cron = "0 10 31 2 *"',
            ["line 7, key 'schedule.cron'", "never fires", "(value: '0 10 31 2 *')"],
        ),
        (
            'cron = "0 10 * * TUE"',
            'cron = "0 10 30 2 MON"',
            ["line 7, key 'schedule.cron'", "never fires", "(value: '0 10 30 2 MON')"],
        ),
        # a schedule firing more often than a run can act: each run plans the whole
        # audience for the same day again (every minute: 1,440 times a day)
        (
            'cron = "0 10 * * TUE"',
            'cron = "* * * * *"',
            [
                "line 7, key 'schedule.cron'",
                "fires more than once an hour (at 00:00 and then 00:01)",
                "(value: '* * * * *')",
            ],
        ),
        (
            'cron = "0 10 * * TUE"',
            'cron = "0,30 10 * * TUE"',
            ["line 7, key 'schedule.cron'", "10:00 and then 10:30", "(value: '0,30 10 * * TUE')"],
        ),
        (
            'cron = "0 10 * * TUE"',
            'cron = "*/59 10 * * TUE"',
            ["line 7, key 'schedule.cron'", "10:00 and then 10:59", "(value: '*/59 10 * * TUE')"],
        ),
        # range checks over two keys are reported at the second one, with its line
        (
            "lapsed_days = [60, 180]",
            "lapsed_days = [60, 180]\nmin_orders = 5\nmax_orders = 2",
            ["line 13, key 'audience.max_orders'", "min_orders is larger", "(value: 2)"],
        ),
        (
            "lapsed_days = [60, 180]",
            "lapsed_days = [60, 180]\nmin_spend = 5\nmax_spend = 2",
            ["line 13, key 'audience.max_spend'", "min_spend is larger", "(value: 2)"],
        ),
        (
            "lapsed_days = [60, 180]",
            "lapsed_days = [180, 60]",
            ["line 11, key 'audience.lapsed_days'", "must be [min, max)"],
        ),
    ],
)
def test_one_broken_file_per_error_class(
    tmp_path: Path, old: str, new: str, expected: list[str] | None
) -> None:
    text = GOOD.replace(old, new).format(name="broken")
    if expected is None:
        (tmp_path / "broken.toml").write_text(text, encoding="utf-8")
        assert load_all(tmp_path, Settings(), ROOT / "templates")[1] == []
        return
    message = check(tmp_path, text)
    assert str(tmp_path / "broken.toml") in message
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize(
    ("old", "new", "key", "meant"),
    [
        ("items = 4", "item = 4", "offer.item", "items"),
        ("[audience]", "[audiance]", "audiance", "audience"),
        ("weight = 1", "wieght = 1", "variants.0.wieght", "weight"),
    ],
)
def test_an_unknown_key_names_the_key_probably_meant(
    tmp_path: Path, old: str, new: str, key: str, meant: str
) -> None:
    """A marketer's typo in a key got pydantic's "Extra inputs are not permitted" and no
    word of what was meant; the campaign's keys are few, so the close one is named."""
    text = (GOOD + '\n[[variants]]\nname = "a"\nweight = 1\n').replace(old, new)
    message = check(tmp_path, text.format(name="broken"))
    expected = f"key {key!r}: Extra inputs are not permitted: no such key here"
    assert f"{expected} (did you mean {meant!r}?)" in message, message


def test_every_problem_of_a_file_and_every_broken_file_at_once(tmp_path: Path) -> None:
    many = (
        GOOD.format(name="many")
        .replace('mode = "mixed"', 'mode = "x"')
        .replace("items = 4", "items = 99")
    )
    (tmp_path / "many.toml").write_text(many, encoding="utf-8")
    (tmp_path / "also.toml").write_text(
        GOOD.format(name="also").replace("0 10", "99 10"), encoding="utf-8"
    )
    (tmp_path / "fine.toml").write_text(GOOD.format(name="fine"), encoding="utf-8")
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert [c.name for c in campaigns] == ["fine"]
    assert sorted(f.path.name for f in failures) == ["also.toml", "many.toml"]
    many_error = next(f for f in failures if f.path.name == "many.toml")
    assert {p.key for p in many_error.problems} == {"offer.mode", "offer.items"}


@pytest.mark.parametrize(
    "nested",
    [
        "[" * 5000 + "]" * 5000,
        "{ a = " * 3000 + "1" + " }" * 3000,
        "{ " + ".".join(["a"] * 5000) + " = 1 }",  # parsed, then too deep for json.dumps
    ],
    ids=["arrays", "inline tables", "dotted keys"],
)
def test_toml_nested_past_the_parsers_stack_is_a_problem_of_its_file(
    tmp_path: Path, nested: str
) -> None:
    """Python's TOML parser recurses once per nested array or inline table: a file nested
    thousands deep raised RecursionError out of ``load_all``, so ``check`` printed a
    traceback (exit 1) and a worker did not start at all, its good campaigns with it."""
    (tmp_path / "deep.toml").write_text(
        GOOD.format(name="deep").replace("[schedule]", f"x = {nested}\n\n[schedule]"),
        encoding="utf-8",
    )
    (tmp_path / "fine.toml").write_text(GOOD.format(name="fine"), encoding="utf-8")
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert [c.name for c in campaigns] == ["fine"]
    [failure] = failures
    [problem] = failure.problems
    assert failure.path == tmp_path / "deep.toml" and problem.line == 6
    assert "nested too deeply" in problem.message


def test_a_campaign_file_past_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """A campaign file had no size limit: one of gigabytes (a generated exclude list gone
    wrong, a file written over) was read whole by ``check`` and by every worker reload. Past
    ``TOML_BYTES_MAX`` it is a problem of its file, read no further; the others load."""
    text = GOOD.format(name="huge")
    padding = "# " + "x" * 98 + "\n"
    big = text + padding * (TOML_BYTES_MAX // len(padding) + 1)
    (tmp_path / "huge.toml").write_text(big, encoding="utf-8")
    (tmp_path / "fine.toml").write_text(GOOD.format(name="fine"), encoding="utf-8")
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert [c.name for c in campaigns] == ["fine"]
    [failure] = failures
    [problem] = failure.problems
    assert failure.path == tmp_path / "huge.toml"
    assert problem.message == f"larger than {TOML_BYTES_MAX:,} bytes"
    (tmp_path / "huge.toml").write_text(big[:TOML_BYTES_MAX], encoding="utf-8")  # at the limit
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert failures == [] and sorted(c.name for c in campaigns) == ["fine", "huge"]


@pytest.mark.parametrize("blank", ['""', '"  "'])
def test_a_blank_subject_is_a_problem_of_its_file(tmp_path: Path, blank: str) -> None:
    """``subject = { en = "" }`` passed ``check``; every e-mail went out without one."""
    text = GOOD.format(name="blank").replace(
        'subject = { en = "Hi" }', f"subject = {{ en = {blank} }}"
    )
    assert "a subject must not be empty" in check(tmp_path, text, "blank")
    assert "key 'template.subject.en'" in check(tmp_path, text, "blank")


def test_relaxing_caps_is_allowed_only_when_the_shop_says_so(tmp_path: Path) -> None:
    relaxed = GOOD.format(name="relaxed").replace("[offer]", "[caps]\ncooldown_days = 1\n\n[offer]")
    assert "may only be stricter" in check(tmp_path, relaxed, "relaxed")
    allowing = Settings(caps={"campaigns_may_relax": True})
    campaigns, failures = load_all(tmp_path, allowing, ROOT / "templates")
    assert failures == [] and campaigns[0].caps.cooldown_days == 1


def test_a_file_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "y.toml").write_bytes(b'name = "y"\n\xff\xfe')
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert campaigns == [] and len(failures) == 1
    message = str(failures[0])
    assert str(tmp_path / "y.toml") in message and "line 2" in message
    assert "not UTF-8" in message


def test_a_duplicate_variant_name_is_reported_at_the_duplicate(tmp_path: Path) -> None:
    variants = "".join(f'\n[[variants]]\nname = "{name}"\nweight = 1\n' for name in ("a", "b", "a"))
    message = check(tmp_path, GOOD.format(name="broken") + variants)
    # the third [[variants]] header is at line 30, its name at 31
    assert "broken.toml: line 31, key 'variants.2.name': variant names must be unique" in message
    # the first one named as keys are ("number 1" beside 'variants.2' read as the second)
    assert "variant names must be unique: 'variants.0.name' has it too (value: 'a')" in message


def test_filter_values_the_catalogue_lacks_are_named_with_the_closest() -> None:
    text = (
        GOOD.format(name="f")
        .replace("[60, 180]", '[60, 180]\ncategories = ["christmass", "party"]')
        .replace("items = 4", 'items = 4\nexclude_categories = ["servce", "zzz"]')
    )
    campaign = Campaign(**tomllib.loads(text))
    items = {
        "a": Item("a", "Bauble", "christmas", 1.0),
        "b": Item("b", "Balloon", "party", 1.0),
        "c": Item("c", "Candle", "christmas_lights", 1.0),
        "p": Item("p", "Postage", "service", 5.0, is_service=True),
    }
    found = catalogue_problems(campaign, text, Catalogue.of(items))
    assert [(p.key, p.line, p.value) for p in found] == [
        ("audience.categories.0", 12, "christmass"),
        ("offer.exclude_categories.0", 17, "servce"),  # a service category is not offered
        ("offer.exclude_categories.1", 17, "zzz"),
    ]
    assert "did you mean 'christmas' or 'christmas_lights'?" in found[0].message
    assert "none of its 3 categories is close" in found[2].message
    assert catalogue_problems(campaign, text, Catalogue.of({})) == []  # a new, empty shop


@pytest.mark.parametrize(
    ("campaign", "part", "read", "message"),
    [
        ("winback", "winback.txt", "{{ survey.id }}", "None"),
        ("nps", "nps.txt", "{{ offers[0].title }}", "no element 0"),
    ],
)
def test_check_renders_each_campaign_with_the_context_its_emails_have(
    tmp_path: Path, campaign: str, part: str, read: str, message: str
) -> None:
    """The sample context held a survey and an offer for every campaign, but only a survey
    (``type = "nps"``) has a survey, and a survey has no offers: a winback template printing
    ``survey.id`` passed ``check`` and failed every e-mail of the campaign at send."""
    import shutil

    from recocamp.campaigns.check import template_problems

    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    path = templates / part
    path.write_text(
        path.read_text(encoding="utf-8").replace("{% endblock %}", f"{read}\n{{% endblock %}}")
    )
    (chosen,) = [
        c for c in load_all(ROOT / "campaigns", Settings(), templates)[0] if c.name == campaign
    ]
    problems = template_problems(chosen, templates)
    assert problems and all(p.path == path for p in problems)
    assert message in problems[0].message


def test_a_misspelled_legal_basis_is_one_problem_not_also_an_empty_list(tmp_path: Path) -> None:
    """pydantic drops the item it refuses and then counts the list: a file naming one basis,
    misspelled, was also told "Tuple should have at least 1 item after validation, not 0",
    as if the list were empty. A list left empty by its own items' problems is those."""
    text = GOOD.replace('legal_basis = ["double_opt_in"]', 'legal_basis = ["double-opt-in"]')
    message = check(tmp_path, text.format(name="broken"))
    assert "line 3, key 'legal_basis.0'" in message and "(value: 'double-opt-in')" in message
    assert "at least 1 item" not in message and "1 problem(s)" in message


def test_a_subject_written_as_text_says_how_to_write_it(tmp_path: Path) -> None:
    """README: "`subject` per locale"; a marketer writing ``subject = "Hi"`` got pydantic's
    "Input should be a valid dictionary", a word TOML does not use."""
    text = GOOD.replace('subject = {{ en = "Hi" }}', 'subject = "Hi"').format(name="broken")
    message = check(tmp_path, text)
    expected = "key 'template.subject': should be a table: subject = { … } (inline) or a"
    assert expected in message, message
    assert "[template.subject] section" in message and "dictionary" not in message


def test_an_excluded_item_id_written_decomposed_excludes_the_item_imported_composed(
    tmp_path: Path,
) -> None:
    """Files and the API store ids composed (NFC); an id pasted into ``exclude_items`` from
    another system's export ('To' + U+0308 + 'pfchen') excluded nothing, and the item the
    marketer meant to keep out of the e-mails was offered."""
    decomposed = unicodedata.normalize("NFD", "Töpfchen")
    text = GOOD.format(name="potty").replace(
        "items = 4", f'items = 2\nexclude_items = ["{decomposed}"]'
    )
    (tmp_path / "potty.toml").write_text(text, encoding="utf-8")
    [campaign], failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert failures == []
    items = {  # as an import stores them: the id composed
        "Töpfchen": Item("Töpfchen", "Potty", "baby", 12.0),
        "cup": Item("cup", "Cup", "kitchen", 6.0),
    }
    now = datetime(2024, 6, 4, 10, 0, tzinfo=UTC)
    context = Context(now, items, [["Töpfchen", 1.0], ["cup", 0.5]], CapPolicy(), ZoneInfo("UTC"))
    customer = Customer("c1", "c1@example.test", consent_basis=ConsentBasis.DOUBLE_OPT_IN)
    chosen = offers_for(campaign, CustomerView(customer, History(())), context)
    assert [offer.item_id for offer in chosen] == ["cup"]


def test_a_survey_for_existing_customers_alone_is_refused_at_its_legal_basis(
    tmp_path: Path,
) -> None:
    """A survey offers nothing, and the existing-customer exception (UWG §7(3)) covers only
    offers like what the customer bought: ``type = "nps"`` with ``legal_basis =
    ["existing_customer"]`` passed ``check`` and every run recorded ``no_consent`` for every
    customer, a campaign that could mail nobody."""
    text = (
        GOOD.format(name="survey")
        .replace(
            'legal_basis = ["double_opt_in"]', 'type = "nps"\nlegal_basis = ["existing_customer"]'
        )
        .replace('[offer]\nmode = "mixed"\nitems = 4\n', "")
        .replace("winback.", "nps.")
    )
    message = check(tmp_path, text, name="survey")
    assert "line 4, key 'legal_basis'" in message, message
    assert "mails nobody" in message and "double_opt_in" in message
    both = text.replace('["existing_customer"]', '["double_opt_in", "existing_customer"]')
    (tmp_path / "survey.toml").write_text(both, encoding="utf-8")
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert failures == [] and [c.name for c in campaigns] == ["survey"]


def test_hidden_files_beside_the_campaigns_are_not_campaign_files(tmp_path: Path) -> None:
    """macOS writes ``._winback.toml`` (its AppleDouble metadata, binary) beside every file it
    copies to a network share or a zip, and Emacs locks a file it edits as ``.#winback.toml``:
    each was read as a broken campaign file, ``check`` exited 2 and the worker counted it
    broken. Names starting with a dot are hidden, in-progress files, as in the drop folder."""
    (tmp_path / "good.toml").write_text(GOOD.format(name="good"), encoding="utf-8")
    (tmp_path / "._good.toml").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (tmp_path / ".#good.toml").write_text("being edited", encoding="utf-8")
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert failures == [] and [c.name for c in campaigns] == ["good"]


def test_every_unknown_category_is_reported_and_only_the_first_get_suggestions() -> None:
    """The "did you mean" of one value costs a comparison with every category (1.3 ms of
    CPU against 300): a file (at most 1 MiB) listing 40,000 unknown categories kept
    ``check`` busy for a minute. The first 20 get suggestions; every one is reported."""
    unknown = [f"christmass{n}" for n in range(40_000)]
    listed = ", ".join(f'"{c}"' for c in unknown)
    text = GOOD.format(name="f").replace("[60, 180]", f"[60, 180]\ncategories = [{listed}]")
    campaign = Campaign(**tomllib.loads(text))
    items = {f"i{n}": Item(f"i{n}", "x", f"category_{n}", 1.0) for n in range(300)}
    items["c"] = Item("c", "Candle", "christmas", 1.0)
    found = catalogue_problems(campaign, text, Catalogue.of(items))
    assert [p.value for p in found] == unknown
    assert {p.line for p in found} == {12}
    assert "did you mean 'christmas'?" in found[0].message
    assert "did you mean 'christmas'?" in found[19].message
    assert "did you mean" not in found[20].message
    assert "not compared" in found[20].message and "first 20" in found[20].message


def test_a_template_without_the_unsubscribe_link_in_one_language_is_warned_of(
    tmp_path: Path,
) -> None:
    """``check`` looked for the unsubscribe link in the English sample alone: a template
    printing it only in its English branch passed, and every German customer got a
    marketing e-mail with no way to opt out in its body."""
    import shutil

    from recocamp.campaigns.check import opt_out_problems

    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    page = '{% if locale == "en" %}Stop: {{ unsubscribe_url }}{% else %}Hallo{% endif %}\n'
    for suffix in ("html", "txt"):
        (templates / f"promo.{suffix}").write_text(page, encoding="utf-8")
    text = GOOD.format(name="promo").replace("winback.", "promo.")
    found = opt_out_problems(Campaign(**tomllib.loads(text)), templates)
    assert [name for name, _ in found] == ["promo.html", "promo.txt"]
    assert all("in 'de'" in p.message and "'en'" not in p.message for _, p in found), found
    text = GOOD.format(name="fine")  # winback's templates extend the layouts, which print it
    assert opt_out_problems(Campaign(**tomllib.loads(text)), templates) == []


def test_a_subject_line_past_its_limit_is_a_problem_of_its_file(tmp_path: Path) -> None:
    """The subject line as written travels in every e-mail's outbox row (it is rendered at
    delivery): a line of a few words after a comment of 500,000 characters passed ``check``
    (it renders short) and was stored again for each customer of each run."""
    long = "{# " + "x" * 500_000 + " #}Hi"
    text = GOOD.format(name="long").replace(
        'subject = { en = "Hi" }', f'subject = {{ en = "{long}" }}'
    )
    problem = check(tmp_path, text, "long")
    assert "key 'template.subject.en'" in problem and "at most 2000 characters" in problem
    assert "(500,008 characters)" in problem
    fine = "{# " + "x" * 1990 + " #}Hi"
    (tmp_path / "long.toml").write_text(text.replace(long, fine), encoding="utf-8")
    campaigns, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert failures == [] and [c.template.subject["en"] for c in campaigns] == [fine]
