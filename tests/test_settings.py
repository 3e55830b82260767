"""Settings: defaults, the TOML file, RECOCAMP_* overrides, and errors that say where."""

from __future__ import annotations

import base64
import os
import re
import tomllib
from datetime import time
from pathlib import Path
from typing import TYPE_CHECKING, get_args
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel, SecretStr

from recocamp.errors import ConfigError
from recocamp.settings import Settings, load_settings, settings_path

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

REPO_SETTINGS = Path(__file__).resolve().parents[1] / "settings.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RECOCAMP_* variable and no ./settings.toml from outside the test."""
    for name in list(os.environ):
        if name.upper().startswith("RECOCAMP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "custom.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value


# --- where values come from -------------------------------------------------------------


def test_defaults_load_without_a_file() -> None:
    assert settings_path() is None
    settings = load_settings()
    assert settings == Settings()
    assert settings.database_url == "sqlite:///recocamp.db"
    assert settings.shop.time_zone == "Europe/Berlin"
    assert settings.shop.currency == "EUR"
    assert settings.esp.batch_size == 500
    assert settings.caps.quiet_hours_start == time(21, 0)
    assert [tier.name for tier in settings.loyalty.tiers] == [
        "bronze",
        "silver",
        "gold",
        "platinum",
    ]
    assert settings.esp_token is None
    assert settings.signing_key is None
    assert settings.api_keys is None


def test_values_come_from_a_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
database_url = "sqlite:///from-file.db"

[shop]
name = "Kerzen & Co"
time_zone = "Europe/Vienna"
currency = "CHF"

[esp]
batch_size = 100

[caps]
quiet_hours_start = 22:30:00

[loyalty]
tiers = [{ name = "basic", min_points = 0 }, { name = "vip", min_points = 900 }]
""",
    )
    settings = load_settings(path)
    assert settings.database_url == f"sqlite:///{tmp_path}/from-file.db"  # beside the file
    assert settings.shop.name == "Kerzen & Co"
    assert settings.shop.time_zone == "Europe/Vienna"
    assert settings.shop.currency == "CHF"
    assert settings.shop.default_locale == "de"  # untouched keys keep their default
    assert settings.esp.batch_size == 100
    assert settings.esp.provider == "postmark"
    assert settings.caps.quiet_hours_start == time(22, 30)
    assert [(t.name, t.min_points) for t in settings.loyalty.tiers] == [("basic", 0), ("vip", 900)]


def test_settings_toml_in_the_working_directory_is_used(tmp_path: Path) -> None:
    write(tmp_path, 'database_url = "sqlite:///cwd.db"\n', name="settings.toml")
    assert load_settings().database_url == f"sqlite:///{tmp_path}/cwd.db"


def test_env_var_points_to_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere").mkdir()
    path = write(tmp_path / "elsewhere", '[shop]\nname = "Via Env"\n')
    write(tmp_path, '[shop]\nname = "From CWD"\n', name="settings.toml")
    monkeypatch.setenv("RECOCAMP_SETTINGS", str(path))
    assert settings_path() == path
    assert load_settings().shop.name == "Via Env"


def test_explicit_path_beats_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = write(tmp_path, '[shop]\nname = "Via Env"\n', name="env.toml")
    explicit = write(tmp_path, '[shop]\nname = "Explicit"\n', name="explicit.toml")
    monkeypatch.setenv("RECOCAMP_SETTINGS", str(from_env))
    assert settings_path(explicit) == explicit
    assert load_settings(explicit).shop.name == "Explicit"


def test_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        """
database_url = "sqlite:///from-file.db"

[shop]
name = "File Shop"
time_zone = "Europe/London"

[esp]
base_url = "http://file.example.test:1"
batch_size = 200
""",
    )
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", "postgresql://app@db.example.test/shop")
    monkeypatch.setenv("RECOCAMP_ESP__BASE_URL", "https://esp.example.test")
    monkeypatch.setenv("RECOCAMP_SHOP__TIME_ZONE", "America/New_York")
    settings = load_settings(path)
    assert settings.database_url == "postgresql://app@db.example.test/shop"
    assert str(settings.esp.base_url) == "https://esp.example.test/"
    assert settings.shop.time_zone == "America/New_York"
    # the rest of the overridden sections still comes from the file
    assert settings.shop.name == "File Shop"
    assert settings.esp.batch_size == 200


def test_relative_paths_are_relative_to_the_settings_file(tmp_path: Path) -> None:
    """Run from another directory (``--settings ../settings.toml``), a command must use
    the same database, models and folders as one run beside the file."""
    shop = tmp_path / "shop"
    shop.mkdir()
    path = write(
        shop,
        'database_url = "sqlite:///shop.db"\n'
        '[ingest]\ndrop_dir = "/srv/incoming"\n'
        '[recommender]\nartifacts_dir = "models"\n',
    )
    (tmp_path / "elsewhere").mkdir()
    os.chdir(tmp_path / "elsewhere")  # the fixture's monkeypatch.chdir restores the cwd
    settings = load_settings(Path("../shop/custom.toml"))
    base = shop.absolute()
    assert settings.base_dir == base
    assert settings.database_url == f"sqlite:///{base}/shop.db"
    assert settings.recommender.artifacts_dir == base / "models"
    assert settings.ingest.drop_dir == Path("/srv/incoming")  # absolute: as written
    assert settings.ingest.processed_dir == base / "incoming/processed"  # a default, too
    assert settings.locate("models/v1") == base / "models/v1"
    assert settings.locate("/abs/v1") == Path("/abs/v1")
    assert path.exists()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:shop?mode=memory&cache=shared&uri=true",
        "sqlite:////srv/shop.db",
        "postgresql://app@db.example.test/shop",
    ],
)
def test_urls_without_a_relative_file_are_untouched(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'database_url = "{url}"\n')
    assert load_settings(path).database_url == url


def test_without_a_file_paths_stay_relative_to_the_cwd() -> None:
    settings = load_settings()
    assert settings.base_dir is None
    assert settings.database_url == "sqlite:///recocamp.db"
    assert settings.recommender.artifacts_dir == Path("artifacts/models")
    assert settings.locate("artifacts/models/v1") == Path("artifacts/models/v1")


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.database_url = "sqlite:///other.db"  # type: ignore[misc]


# --- errors that say where ----------------------------------------------------------------


def test_bad_value_names_file_key_line_and_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """# comment line
database_url = "sqlite:///x.db"

[shop]
name = "Demo"
time_zone = "Mars/Olympus_Mons"
""",
    )
    error = config_error(path)
    message = str(error)
    assert str(path) in message
    assert "shop.time_zone" in message
    assert "line 6" in message
    assert "Mars/Olympus_Mons" in message
    assert error.path == path
    [problem] = error.problems
    assert (problem.key, problem.line, problem.value) == ("shop.time_zone", 6, "Mars/Olympus_Mons")


def test_same_key_name_in_two_sections_gets_the_right_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """[shop]
base_url = "https://shop.example.test"

[esp]
provider = "postmark"
base_url = "not a url"
""",
    )
    [problem] = config_error(path).problems
    assert problem.key == "esp.base_url"
    assert problem.line == 6
    assert problem.value == "not a url"


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """[shop]
time_zone = "Nowhere/Atlantis"
currency = "eur"

[esp]
batch_size = 9999

[api]
port = 0
""",
    )
    error = config_error(path)
    found = {problem.key: (problem.line, problem.value) for problem in error.problems}
    assert found == {
        "shop.time_zone": (2, "Nowhere/Atlantis"),
        "shop.currency": (3, "eur"),
        "esp.batch_size": (6, 9999),
        "api.port": (9, 0),
    }
    assert "4 problem(s)" in str(error)
    for key in found:
        assert key is not None
        assert key in str(error)


def test_unknown_key_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[esp]\nprovider = 'fake'\ntmeout_s = 3\n")
    error = config_error(path)
    [problem] = error.problems
    assert problem.key == "esp.tmeout_s"
    assert problem.line == 3
    assert "esp.tmeout_s" in str(error)


def test_unknown_section_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[shop]\nname = 'x'\n\n[recomender]\nmodel = 'als'\n")
    [problem] = config_error(path).problems
    assert problem.key == "recomender"
    assert problem.line == 4


def test_an_unknown_key_names_the_key_probably_meant(tmp_path: Path) -> None:
    """ "Extra inputs are not permitted" said nothing of what is permitted: a typo in a key
    was left to the user to spot (the CSV importer names the column probably meant)."""
    path = write(tmp_path, "[esp]\ntmeout_s = 3\n\n[recomender]\nmodel = 'als'\n")
    problems = {p.key: p.message for p in config_error(path).problems}
    assert "did you mean 'timeout_s'?" in problems["esp.tmeout_s"]
    assert "did you mean 'recommender'?" in problems["recomender"]
    far = {p.key: p.message for p in config_error(write(tmp_path, "[shop]\nxyz = 1\n")).problems}
    assert "the keys here: base_url, currency, default_locale, name, time_zone" in far["shop.xyz"]


def test_invalid_toml_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[shop]\nname = "ok"\ncurrency = "EUR\n')
    error = config_error(path)
    [problem] = error.problems
    assert problem.line == 3
    assert str(path) in str(error)
    assert "line 3" in str(error)
    assert "TOML" in str(error)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    error = config_error(missing)
    assert str(missing) in str(error)
    assert "cannot read" in str(error)


@pytest.mark.parametrize("key", ["esp_token", "signing_key", "api_keys"])
def test_secret_in_the_file_is_refused(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'database_url = "sqlite:///x.db"\n{key} = "s3cr3t-value"\n')
    error = config_error(path)
    message = str(error)
    assert f"RECOCAMP_{key.upper()}" in message
    assert str(path) in message
    assert "s3cr3t-value" not in message  # the refusal must not echo the secret
    [problem] = error.problems
    assert problem.key == key
    assert problem.line == 2


def test_all_secrets_in_the_file_are_refused_together(tmp_path: Path) -> None:
    path = write(tmp_path, 'esp_token = "a"\nsigning_key = "b"\napi_keys = "c"\n')
    error = config_error(path)
    assert [(p.key, p.line) for p in error.problems] == [
        ("esp_token", 1),
        ("signing_key", 2),
        ("api_keys", 3),
    ]


def test_secrets_from_the_environment_are_accepted_and_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "tok-0123456789")
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "sign-0123456789")
    monkeypatch.setenv("RECOCAMP_API_KEYS", "keys-0123456789")
    settings = load_settings(REPO_SETTINGS)
    assert isinstance(settings.esp_token, SecretStr)
    assert isinstance(settings.signing_key, SecretStr)
    assert isinstance(settings.api_keys, SecretStr)
    assert settings.esp_token.get_secret_value() == "tok-0123456789"
    assert settings.signing_key.get_secret_value() == "sign-0123456789"
    assert settings.api_keys.get_secret_value() == "keys-0123456789"
    for shown in (repr(settings), str(settings), repr(settings.esp_token)):
        assert "0123456789" not in shown


def test_bad_env_value_names_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[esp]\nprovider = "fake"\n')
    monkeypatch.setenv("RECOCAMP_ESP__BATCH_SIZE", "0")
    error = config_error(path)
    [problem] = error.problems
    assert problem.key == "esp.batch_size"
    assert problem.value == "0"
    assert problem.line is None  # not from the file, so no file line
    assert "RECOCAMP_ESP__BATCH_SIZE" in str(error)


def test_bad_env_time_zone_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECOCAMP_SHOP__TIME_ZONE", "Nowhere/Atlantis")
    error = config_error()
    assert "RECOCAMP_SHOP__TIME_ZONE" in str(error)
    assert "Nowhere/Atlantis" in str(error)
    assert error.problems[0].key == "shop.time_zone"


def test_loyalty_tiers_out_of_order_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """[shop]
name = "x"

[loyalty]
tiers = [
  { name = "bronze", min_points = 0 },
  { name = "gold", min_points = 2000 },
  { name = "silver", min_points = 500 },
]
""",
    )
    error = config_error(path)
    [problem] = error.problems
    assert problem.key == "loyalty"
    assert problem.line == 4
    assert "ascend" in str(error)


def test_the_campaign_chunk_size_comes_from_the_file(tmp_path: Path) -> None:
    assert load_settings().campaigns.chunk_size == 1000
    assert load_settings(REPO_SETTINGS).campaigns.chunk_size == 1000
    path = write(tmp_path, "[campaigns]\nchunk_size = 250\n")
    assert load_settings(path).campaigns.chunk_size == 250


@pytest.mark.parametrize("value", [0, -5, 50_001, '"big"'])
def test_a_bad_campaign_chunk_size_names_key_line_and_value(tmp_path: Path, value: object) -> None:
    path = write(tmp_path, f"[shop]\nname = 'x'\n\n[campaigns]\nchunk_size = {value}\n")
    error = config_error(path)
    [problem] = error.problems
    shown = value.strip('"') if isinstance(value, str) else value
    assert (problem.key, problem.line, problem.value) == ("campaigns.chunk_size", 5, shown)
    assert "campaigns.chunk_size" in str(error) and str(shown) in str(error)


def test_loyalty_tiers_with_equal_thresholds_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[loyalty]\ntiers = [{ name = "a", min_points = 0 }, { name = "b", min_points = 0 }]\n',
    )
    assert "ascend" in str(config_error(path))


def test_a_request_timeout_longer_than_half_the_claim_lease_is_refused(tmp_path: Path) -> None:
    """Claims are renewed at half their lease, just before a request: a request allowed to run
    longer than the other half would outlive the lease and be sent by a second deliverer."""
    path = write(tmp_path, "[esp]\ntimeout_s = 40\nclaim_lease_s = 60\n")
    error = str(config_error(path))
    assert "esp" in error and "timeout_s (40)" in error and "claim_lease_s (60)" in error
    fine = write(tmp_path, "[esp]\ntimeout_s = 30\nclaim_lease_s = 60\n", name="fine.toml")
    assert load_settings(fine).esp.timeout_s == 30


def test_the_repository_settings_file_loads() -> None:
    settings = load_settings(REPO_SETTINGS)
    assert settings.shop.time_zone == "Europe/London"
    assert settings.shop.currency == "GBP"
    assert settings.shop.default_locale == "en"
    assert settings.caps.quiet_hours_end == time(8, 0)
    assert settings.recommender.time_decay_half_life_days is None


def _documented_lines(text: str) -> dict[str, str]:
    """Each key of a settings file, set or commented out (``# key = …``), as
    ``section.key`` → its line and the indented comment lines that continue it."""
    lines: dict[str, str] = {}
    section = key = ""
    for line in text.splitlines():
        if header := re.match(r"^\[(\w+)\]", line):
            section, key = f"{header.group(1)}.", ""
        elif found := re.match(r"^(?:# )?(\w+) = ", line):
            key = f"{section}{found.group(1)}"
            lines.setdefault(key, line)
        elif key and re.match(r"^\s+#", line):
            lines[key] += "\n" + line
        else:
            key = ""
    return lines


def test_the_repository_settings_file_documents_every_key_with_its_default() -> None:
    """settings.toml says "every key is optional; the value shown is the default unless
    noted": a key the code accepts but the file leaves out, or a value that differs from
    the code's default without saying so, misleads whoever copies it."""
    text = REPO_SETTINGS.read_text(encoding="utf-8")
    documented = _documented_lines(text)
    shipped = Settings(**tomllib.loads(text))
    defaults = Settings()
    wrong = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for key in model.model_fields:
            line = documented.get(f"{section}.{key}")
            if line is None:
                wrong.append(f"{section}.{key}: not in settings.toml")
                continue
            value = getattr(getattr(shipped, section), key)
            if value != getattr(getattr(defaults, section), key) and "default" not in line:
                wrong.append(f"{section}.{key}: {value!r} shown as if it were the default")
    assert wrong == []


def test_the_signing_key_is_read_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    unset = load_settings(REPO_SETTINGS)
    assert unset.signing_key_bytes() is None
    with pytest.raises(ConfigError) as refused:
        unset.require_signing_key()
    assert refused.value.problems[0].key == "signing_key"
    assert "RECOCAMP_SIGNING_KEY" in str(refused.value)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "sign-0123456789")
    settings = load_settings(REPO_SETTINGS)
    assert settings.signing_key_bytes() == settings.require_signing_key() == b"sign-0123456789"


def test_the_shop_zone_is_a_property_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOCAMP_SHOP__TIME_ZONE", "America/New_York")
    shop = load_settings(REPO_SETTINGS).shop
    assert shop.zone == ZoneInfo("America/New_York") and shop.zone is shop.zone
    assert shop.model_copy(update={"time_zone": "Asia/Tokyo"}).zone == ZoneInfo("Asia/Tokyo")


def test_a_database_left_where_earlier_versions_looked_is_not_replaced_by_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier versions read a relative SQLite file from the current directory; now it is
    beside the settings file. Where only the old place holds it, loading refuses and names
    both, rather than opening a new, empty database."""
    site, run = tmp_path / "site", tmp_path / "run"
    site.mkdir()
    run.mkdir()
    (site / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    (run / "shop.db").write_bytes(b"")
    monkeypatch.chdir(run)
    monkeypatch.delenv("RECOCAMP_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(site / "settings.toml")
    (problem,) = caught.value.problems
    assert problem.key == "database_url" and problem.line == 1
    assert str(site / "shop.db") in problem.message and str(run / "shop.db") in problem.message
    (site / "shop.db").write_bytes(b"")  # once moved (or present in both), it is used
    assert load_settings(site / "settings.toml").database_url == f"sqlite:///{site / 'shop.db'}"


# --- every number has a range ---------------------------------------------------------------


def _numeric_keys() -> list[tuple[str, str, type]]:
    """(section, key, int or float) of every number in a section (not bool, not a list)."""
    found = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for key, inner in model.model_fields.items():
            kinds = set(get_args(inner.annotation) or [inner.annotation]) - {type(None)}
            if kinds in ({int}, {float}):
                found.append((section, key, kinds.pop()))
    return found


NUMERIC_KEYS = _numeric_keys()


def test_the_walk_finds_the_numbers() -> None:
    """The parametrised test below covers what this finds: make sure that is everything."""
    keys = {f"{section}.{key}" for section, key, _ in NUMERIC_KEYS}
    assert len(keys) > 70
    assert {"templates.max_int_bits", "templates.max_loop_iterations", "esp.retry_max_s"} <= keys
    assert "recommender.time_decay_half_life_days" in keys  # float | None too


@pytest.mark.parametrize(("section", "key", "kind"), NUMERIC_KEYS)
def test_every_number_has_a_ceiling_named_with_key_line_and_value(
    tmp_path: Path, section: str, key: str, kind: type
) -> None:
    """10**100 (or inf, nan) would pass an unbounded key and switch a protection off or
    overflow later (a timedelta, a float): refused when the settings load."""
    huge = 10**100
    values: list[object] = [huge] if kind is int else [float(huge), float("inf"), float("nan")]
    for value in values:
        written = value if kind is int else repr(value)
        path = write(tmp_path, f"[shop]\nname = 'x'\n\n[{section}]\n{key} = {written}\n")
        [problem] = config_error(path).problems
        assert (problem.key, problem.line) == (f"{section}.{key}", 5)
        assert problem.value == value or (value != value and problem.value != problem.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_loop_iterations", 0),
        ("max_loop_iterations", 10**100),
        ("max_int_bits", 0),
        ("max_int_bits", 10**100),
        ("max_output_chars", 0),
        ("max_output_chars", 10**12),
        ("render_time_s", 0.001),
        ("render_time_s", 61),
        ("max_depth", 0),
    ],
)
def test_template_limits_have_a_floor_and_a_ceiling(tmp_path: Path, key: str, value: int) -> None:
    """0 loops would fail every template; 10**100 would switch the limit off."""
    path = write(tmp_path, f"# limits\n[templates]\n{key} = {value}\n")
    error = config_error(path)
    [problem] = error.problems
    assert (problem.key, problem.line, problem.value) == (f"templates.{key}", 3, value)
    assert str(path) in str(error) and f"templates.{key}" in str(error) and str(value) in str(error)


def test_the_documented_ranges_hold_at_their_ends(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[templates]\nmax_loop_iterations = 100000000\nmax_int_bits = 100000\n"
        "render_time_s = 0.01\n[privacy]\ncontact_events_days = 36500\n"
        "[caps]\nmax_per_7d = 1000000000\n[recommender]\nrandom_state = 4294967295\n",
    )
    settings = load_settings(path)
    assert settings.templates.max_int_bits == 100_000
    assert settings.privacy.contact_events_days == 36_500
    assert settings.recommender.random_state == 2**32 - 1


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("[recommender]\nrandom_state = -1\n", "recommender.random_state", 2),  # numpy refuses
        ("[demo]\nseed = -1\n", "demo.seed", 2),
        ("[esp]\nmax_attempts = 2000\n", "esp.max_attempts", 2),  # 2**1999: no float
        ("[loyalty]\ntiers = []\n", "loyalty", 1),  # no tier to be in
        (
            f'[loyalty]\ntiers = [{{ name = "a", min_points = {10**100} }}]\n',
            "loyalty.tiers.0.min_points",
            2,
        ),
        ("[measure]\nsnapshot_window_days = [7, 99999]\n", "measure.snapshot_window_days.1", 2),
        (
            f"[measure]\nsnapshot_window_days = {list(range(1, 30))}\n",
            "measure.snapshot_window_days",
            2,
        ),
    ],
)
def test_values_that_would_fail_at_run_time_are_refused(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    [problem] = config_error(write(tmp_path, text)).problems
    assert (problem.key, problem.line) == (key, line)


def test_a_huge_value_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECOCAMP_TEMPLATES__MAX_INT_BITS", str(10**100))
    error = config_error()
    [problem] = error.problems
    assert problem.key == "templates.max_int_bits" and problem.value == str(10**100)
    assert "RECOCAMP_TEMPLATES__MAX_INT_BITS" in str(error)


# --- types: TOML's, not pydantic's lax reading of them -----------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('max_per_24h = "2"', "must be a whole number, not a string in quotes (value: '2')"),
        ("max_per_24h = 2.0", "must be a whole number, not a decimal number (value: 2.0)"),
        ("campaigns_may_relax = 1", "must be true or false, not a number (value: 1)"),
        ('campaigns_may_relax = "false"', "must be true or false, not a string in quotes"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, f'database_url = "sqlite:///x.db"\n\n[caps]\n{line}\n')
    error = config_error(path)
    [problem] = error.problems
    key = "caps." + line.split(" =")[0]
    assert problem.key == key and problem.line == 4
    assert f"{path}: line 4, key '{key}': {expected}" in str(error)


def test_what_toml_writes_only_as_text_is_still_read_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Times (TOML's own or "21:30"), paths, URLs, zones and names of choices are strings or
    TOML values in a file, and every environment variable is a string."""
    path = write(
        tmp_path,
        '[caps]\nquiet_hours_start = "21:30"\nquiet_hours_end = 07:15:00\n'
        '[shop]\nbase_url = "https://shop.example.test"\ntime_zone = "Europe/London"\n'
        '[ingest]\ndrop_dir = "in"\n[recommender]\nmodel = "als"\n'
        "[esp]\ntimeout_s = 5\n",
    )
    monkeypatch.setenv("RECOCAMP_CAPS__MAX_PER_24H", "2")
    settings = load_settings(path)
    assert (settings.caps.quiet_hours_start, settings.caps.quiet_hours_end) == (
        time(21, 30),
        time(7, 15),
    )
    assert settings.caps.max_per_24h == 2 and settings.esp.timeout_s == 5.0
    assert settings.ingest.drop_dir == tmp_path / "in"


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6 *"])
def test_a_worker_cron_that_never_fires_is_refused(tmp_path: Path, cron: str) -> None:
    path = write(tmp_path, f'[worker]\ntrain_cron = "{cron}"\n')
    [problem] = config_error(path).problems
    assert (problem.key, problem.line, problem.value) == ("worker.train_cron", 2, cron)
    assert "never fires" in problem.message


def test_the_first_fire_is_found_from_the_given_instant_within_the_bound() -> None:
    """February 29th on a Monday fires once in 28 years: found from a fixed ``now``, and
    not when the search is bounded to fewer years than it takes."""
    from datetime import UTC, datetime

    from recocamp.settings import first_fire

    now = datetime(2017, 3, 1, tzinfo=UTC)
    assert first_fire("0 0 29 2 MON", now) == datetime(2044, 2, 29, tzinfo=UTC)
    assert first_fire("0 0 29 2 MON", now, years=20) is None
    assert first_fire("0 0 31 2 *", now) is None


# --- settings that would break delivery feedback ------------------------------------------


def _der(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(public).decode()


def _keys() -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    return {
        "not base64": "not-base64!!",
        "base64 of no key": base64.b64encode(b"hello, this is no key").decode(),
        "another curve": _der(ec.generate_private_key(ec.SECP384R1())),
        "not ECDSA": _der(ed25519.Ed25519PrivateKey.generate()),
    }


@pytest.mark.parametrize("kind", ["not base64", "base64 of no key", "another curve", "not ECDSA"])
def test_a_sendgrid_key_the_verifier_cannot_load_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    value = _keys()[kind]
    monkeypatch.setenv("RECOCAMP_ESP__WEBHOOK_PUBLIC_KEY", value)
    error = config_error()
    [problem] = error.problems
    assert problem.key == "esp.webhook_public_key" and problem.value is None
    assert "RECOCAMP_ESP__WEBHOOK_PUBLIC_KEY" in str(error)
    assert value not in str(error) and value[:12] not in str(error)


def test_a_sendgrid_key_is_loaded_as_the_verifier_loads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    value = _der(ec.generate_private_key(ec.SECP256R1()))
    wrapped = "\n".join(value[i : i + 40] for i in range(0, len(value), 40))  # pasted wrapped
    monkeypatch.setenv("RECOCAMP_ESP__WEBHOOK_PUBLIC_KEY", wrapped)
    assert load_settings().esp.webhook_public_key == wrapped


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://shop.example.com", True),
        ("https://shop.example.com/recocamp", True),
        ("http://127.0.0.1:8000", True),
        ("http://127.8.0.1", True),
        ("http://localhost:8000", True),
        ("http://api.localhost", True),
        ("http://[::1]:8000", True),
        ("http://shop.example.com", False),
        ("http://localhost.example.com", False),
        ("http://10.0.0.5:8000", False),
        ("http://[::2]", False),
    ],
)
def test_the_public_url_is_https_unless_it_is_this_machine(
    tmp_path: Path, url: str, ok: bool
) -> None:
    path = write(tmp_path, f'[api]\npublic_url = "{url}"\n')
    if ok:
        assert str(load_settings(path).api.public_url).startswith(url)
        return
    [problem] = config_error(path).problems
    assert problem.key == "api.public_url" and problem.line == 2
    assert "https" in problem.message and "RFC 8058" in problem.message


def test_a_file_saved_with_a_utf8_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    """Windows editors (Notepad) save UTF-8 with a BOM: the file means the same, and a bad
    value in it is still named at its own line (not "Invalid statement" at line 1)."""
    text = '[shop]\nname = "Laden"\n[worker]\nmisfire_grace_s = -1\n'
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("-1", "60").encode())
    assert load_settings(path).shop.name == "Laden"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    [problem] = config_error(path).problems
    assert (problem.key, problem.line, problem.value) == ("worker.misfire_grace_s", 4, -1)


@pytest.mark.parametrize("key", ["leader_poll_s", "deliver_every_s", "import_every_s"])
def test_a_worker_polling_interval_below_a_tenth_of_a_second_is_refused(
    tmp_path: Path, key: str
) -> None:
    """``leader_poll_s = 0.000001`` passed (above 0) and the worker spun: a heartbeat write
    transaction, a delivery round or a drop-folder scan back to back, a whole core (9.2 CPU
    seconds in 12 s) and the SQLite write lock held against everything else."""
    [problem] = config_error(write(tmp_path, f"[worker]\n{key} = 0.000001\n")).problems
    assert (problem.key, problem.line, problem.value) == (f"worker.{key}", 2, 0.000001)
    assert load_settings(write(tmp_path, f"[worker]\n{key} = 0.1\n"))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('from_email = "shop.example.test"', "from_email"),  # no @: every e-mail refused
        ('from_email = "mailto:shop@example.test"', "from_email"),
        ('from_email = "shop@example.test, boss@example.test"', "from_email"),  # a list
        ('from_email = "Demo Shop <shop@example.test"', "from_email"),
        ('from_email = "Shop\\r\\nBcc: all@example.test <shop@example.test>"', "from_email"),
        ('unsubscribe_mailto = "mailto:unsubscribe@shop.example"', "unsubscribe_mailto"),
        ('unsubscribe_mailto = "Shop <unsubscribe@shop.example>"', "unsubscribe_mailto"),
        (
            'unsubscribe_mailto = "u@shop.example>, <https://elsewhere.example/x"',
            "unsubscribe_mailto",
        ),
        ('unsubscribe_mailto = "unsubscribe at shop.example"', "unsubscribe_mailto"),
    ],
)
def test_the_sender_and_the_unsubscribe_mailbox_are_one_address(
    tmp_path: Path, line: str, key: str
) -> None:
    """``[esp] from_email`` goes into every message's From, ``unsubscribe_mailto`` into
    ``<mailto:…?subject=unsubscribe%20TOKEN>`` of every List-Unsubscribe header: a careless
    value (``mailto:`` written twice, a list, no ``@``) passed ``check`` and failed every
    message at the provider, or sent mail clients' unsubscribes to no mailbox (or a URL)."""
    [problem] = config_error(write(tmp_path, f"[esp]\n{line}\n")).problems
    assert (problem.key, problem.line) == (f"esp.{key}", 2)
    assert "address" in problem.message


@pytest.mark.parametrize(
    ("provider", "sender", "ok"),
    [
        ("postmark", "shop@example.test", True),
        ("postmark", "Demo Shop <shop@example.test>", True),  # Postmark's From takes a name
        ("fake", "Demo Shop <shop@example.test>", True),  # the stand-in for Postmark
        ("sendgrid", "shop@example.test", True),
        ("sendgrid", "Demo Shop <shop@example.test>", False),  # {"email": …}: the address
        ("brevo", "Demo Shop <shop@example.test>", False),
        ("mailpit", "Demo Shop <shop@example.test>", False),
    ],
)
def test_a_sender_name_only_where_the_provider_takes_one(
    tmp_path: Path, provider: str, sender: str, ok: bool
) -> None:
    path = write(tmp_path, f'[esp]\nprovider = "{provider}"\nfrom_email = "{sender}"\n')
    if ok:
        assert load_settings(path).esp.from_email == sender
        return
    [problem] = config_error(path).problems
    assert (problem.key, problem.line) == ("esp.from_email", 3)
    assert provider in problem.message


def test_a_settings_file_nested_past_the_parsers_stack_names_its_line(tmp_path: Path) -> None:
    """Python's TOML parser recurses per nested array: thousands deep was a RecursionError
    (every command a traceback, exit 1) rather than the file's problem (exit 2)."""
    path = write(tmp_path, '[shop]\nname = "x"\n\n[kpis]\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    [problem] = config_error(path).problems
    assert problem.line == 5 and "nested too deeply" in problem.message
    deep = write(tmp_path, '[shop]\nname = "x"\n\n[' + ".".join(["a"] * 5000) + "]\nb = 1\n")
    [problem] = config_error(deep).problems  # a table header thousands of keys deep
    assert problem.line == 4 and "nested too deeply" in problem.message


@pytest.mark.parametrize("zone", ["Europe", "America/", "Z" * 5000])
def test_a_zone_the_system_cannot_open_as_a_file_is_a_problem_not_a_crash(
    tmp_path: Path, zone: str
) -> None:
    """``ZoneInfo`` opens the name as a file of the zone database: a region (a folder:
    IsADirectoryError) or a name longer than the system allows raised OSError, a traceback
    from every command instead of the key's problem."""
    [problem] = config_error(write(tmp_path, f'[shop]\ntime_zone = "{zone}"\n')).problems
    assert (problem.key, problem.line, problem.value) == ("shop.time_zone", 2, zone)
    assert "unknown IANA time zone" in problem.message


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "right/UTC", "posix/Europe/Berlin"])
def test_a_zone_is_an_iana_name_not_a_file_of_this_machine(tmp_path: Path, zone: str) -> None:
    """``localtime`` is whatever zone the machine running the command has (the worker's may
    differ from the one ``check`` ran on); ``right/…`` and ``posix/…`` are copies of the
    zone database that the ``tzdata`` package does not have."""
    [problem] = config_error(write(tmp_path, f'[shop]\ntime_zone = "{zone}"\n')).problems
    assert (problem.key, problem.line, problem.value) == ("shop.time_zone", 2, zone)


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("RECOCAMP_API__CORS_ORIGINS", "https://shop.example", "api.cors_origins"),
        ("RECOCAMP_MEASURE__SNAPSHOT_WINDOW_DAYS", "7,30", "measure.snapshot_window_days"),
        ("RECOCAMP_LOYALTY__TIERS", "gold", "loyalty.tiers"),
        ("RECOCAMP_SHOP", "Demo Shop", "shop"),  # a section is a table
    ],
)
def test_an_env_value_of_a_list_or_table_key_that_is_not_json_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    """pydantic-settings reads the environment value of a list or a table as JSON; one that
    is not (``RECOCAMP_API__CORS_ORIGINS=https://shop.example``) raised its SettingsError,
    a traceback from every command (exit 1) that named neither the variable nor the value."""
    monkeypatch.setenv(variable, value)
    error = config_error()
    [problem] = error.problems
    assert (problem.key, problem.line, problem.value) == (key, None, value)
    assert variable in str(error) and "JSON" in problem.message


def test_an_env_list_written_as_json_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOCAMP_API__CORS_ORIGINS", '["https://shop.example"]')
    assert load_settings().api.cors_origins == ("https://shop.example",)


def test_a_bad_element_of_an_env_list_names_the_variable_not_the_files_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The problem's key is the element's (``measure.snapshot_window_days.1``), which no
    variable is named after: the variable of the list holding it set the value, and the
    file's line of the same key (overridden) was named instead."""
    path = write(tmp_path, "[measure]\nsnapshot_window_days = [7, 30]\n")
    monkeypatch.setenv("RECOCAMP_MEASURE__SNAPSHOT_WINDOW_DAYS", "[7, 99999]")
    error = config_error(path)
    [problem] = error.problems
    assert (problem.key, problem.line, problem.value) == (
        "measure.snapshot_window_days.1",
        None,
        99999,
    )
    assert "RECOCAMP_MEASURE__SNAPSHOT_WINDOW_DAYS" in str(error)


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ('"' + "N" * 1_000_001 + '"', "N" * 1_000_001),  # past the render's output bound
        ('"' + "N" * 201 + '"', "N" * 201),
        ('""', ""),
        ('"Laden\\u0000"', "Laden\x00"),
        ('"Laden\\nGmbH"', "Laden\nGmbH"),
    ],
)
def test_the_shop_name_is_one_line_of_at_most_200_characters(
    tmp_path: Path, written: str, value: str
) -> None:
    """Every e-mail, page and subject may print ``shop.name``, but ``check`` renders the
    templates with a sample shop's: a name past ``[templates] max_output_chars`` passed it
    and failed every e-mail of every run (a subject with the name, past 2,000 characters)."""
    [problem] = config_error(write(tmp_path, f"[shop]\nname = {written}\n")).problems
    assert (problem.key, problem.line) == ("shop.name", 2)
    assert load_settings(write(tmp_path, '[shop]\nname = "Ünïcødé Laden & Co. – 2"\n'))


@pytest.mark.parametrize("key", ["api.public_url", "shop.base_url"])
@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/recocamp?src=mail",  # …?src=mail/u/TOKEN: no page
        "https://shop.example/#top",
        "https://owner:secret@shop.example/",  # printed in every e-mail
    ],
)
def test_a_base_url_is_one_links_are_built_on(tmp_path: Path, key: str, url: str) -> None:
    """Every e-mail's links append a path to these (``/u/TOKEN``, ``/p/TOKEN``,
    ``/v1/feedback?…``, ``/items/ID``): after a query or a fragment the path landed in it,
    and every one-click unsubscribe (RFC 8058) reached no page; credentials went out in
    every e-mail."""
    section, name = key.split(".")
    [problem] = config_error(write(tmp_path, f'[{section}]\n{name} = "{url}"\n')).problems
    assert (problem.key, problem.line) == (key, 2)
    assert load_settings(write(tmp_path, f'[{section}]\n{name} = "https://shop.example/r/"\n'))


@pytest.mark.parametrize(
    "url", ["5", "recocamp.db", "mysql://shop:s3cret@db.example.test/shop", "sqlite:/x.db"]
)
def test_a_database_url_that_names_no_sqlite_or_postgresql_is_refused_by_key(
    tmp_path: Path, url: str
) -> None:
    """``database_url = "5"`` or a bare file name passed the settings and failed every
    command later (exit 1, no key named); the file's line is named, the value (which may
    hold a password) is not repeated."""
    path = write(tmp_path, f'database_url = "{url}"\n')
    error = config_error(path)
    [problem] = error.problems
    assert (problem.key, problem.line, problem.value) == ("database_url", 1, None)
    assert "s3cret" not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///shop.db",
        "sqlite+pysqlite:///shop.db",
        "postgres://app@db.example.test/shop",
        "postgresql://app@db.example.test/shop",
        "postgresql+psycopg://app:pw@db.example.test:5432/shop",
    ],
)
def test_sqlite_and_postgresql_urls_are_taken(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'database_url = "{url}"\n')
    assert load_settings(path).database_url.split(":", 1)[0] == url.split(":", 1)[0]


@pytest.mark.parametrize(
    ("variable", "key"),
    [("RECOCAMP_ESP__TOKEN", "esp.token"), ("RECOCAMP_API__KEYS", "api.keys")],
)
def test_an_unknown_key_is_named_without_its_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, key: str
) -> None:
    """A secret set under a mistyped name (``RECOCAMP_ESP__TOKEN`` for
    ``RECOCAMP_ESP_TOKEN``) or under a section in the file was printed with its problem."""
    monkeypatch.setenv(variable, "pm-secret-123")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert key in str(caught.value) and variable in str(caught.value)
    assert "pm-secret-123" not in str(caught.value)
    monkeypatch.delenv(variable)
    path = write(tmp_path, '[esp]\ntoken = "pm-secret-456"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "esp.token" in str(caught.value) and "line 2" in str(caught.value)
    assert "pm-secret-456" not in str(caught.value)


def test_a_metrics_host_that_is_no_host_is_refused_where_it_is_written(tmp_path: Path) -> None:
    """``check`` passed ``[worker] metrics_host = "metrics host"`` (or one in
    ``RECOCAMP_WORKER__METRICS_HOST``), and the worker, which cannot listen there, ran without
    metrics after one warning in its log: the first sign was a scrape failing."""
    path = write(tmp_path, '[worker]\nmetrics_host = "metrics host"\n')
    error = str(config_error(path))
    assert "line 2, key 'worker.metrics_host'" in error and "'metrics host'" in error
    for host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "metrics.internal", ""):
        fine = write(tmp_path, f'[worker]\nmetrics_host = "{host}"\n', name="fine.toml")
        assert load_settings(fine).worker.metrics_host == host
