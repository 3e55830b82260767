"""Reading TOML files people write (settings, campaigns) with errors that say where.

``tomllib`` keeps no positions, so :func:`line_of` finds a dotted key's line by scanning the
text (tables, arrays of tables and inline keys); pydantic's ``ValidationError`` entries become
:class:`~recocamp.errors.Problem` objects with the dotted key, its line and the bad value.

TOML has types, so a value of the wrong one is refused (:func:`validated`): pydantic's lax
mode would read ``"10"`` as 10, ``"no"`` as false, ``1`` as true and ``4.0`` as 4, and a
careless file would pass. What a text format can only give as a string (an enum's name, a
path, a time zone, a URL, a time like ``"21:00"``) is still read from one.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable
from datetime import date, time
from pathlib import Path
from typing import IO, Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from recocamp.errors import ConfigError, Problem

_SECTION = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def without_bom(text: str) -> str:
    """A file's text without the byte order mark Windows editors put first: read as UTF-8 it
    is a character (U+FEFF), no part of a TOML document, and one a template would print into
    every e-mail (before a layout's doctype, at the start of the text part)."""
    return text.removeprefix("\ufeff")


def open_regular(path: Path, *, follow_links: bool = True) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file, else OSError whose ``strerror``
    says what it is. Never waits on a named pipe (``O_NONBLOCK``: reading one waits for a
    writer for ever, and ``campaigns/x.toml`` made a FIFO hung ``check`` and the worker), and
    without ``follow_links`` never reads through a symbolic link (``O_NOFOLLOW``)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    handle = os.fdopen(os.open(path, flags), "rb")
    mode = os.fstat(handle.fileno()).st_mode
    if not stat.S_ISREG(mode):
        handle.close()
        raise OSError(errno.EINVAL, f"not a regular file ({file_kind(mode)})")
    return handle


def file_kind(mode: int) -> str:
    """What an entry of ``mode`` (``st_mode``) is, in words, when it is no regular file."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


TOML_BYTES_MAX = 1 << 20  # a settings or campaign file: ours are a few KB


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed document and its text; unreadable, invalid or oversized files (more than
    :data:`TOML_BYTES_MAX`: read at most that, never whole, since every worker reload reads
    every campaign file again) are ConfigErrors."""
    try:
        with open_regular(path) as handle:
            raw = handle.read(TOML_BYTES_MAX + 1)
        if len(raw) > TOML_BYTES_MAX:
            raise ConfigError(path, [Problem(f"larger than {TOML_BYTES_MAX:,} bytes")])
        text = without_bom(raw.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(path, [Problem(f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [not_utf8(exc)]) from None
    try:
        document = tomllib.loads(text)
    except RecursionError:  # tomllib recurses per nested array or inline table
        depth, deep_line = deepest(text)
        message = (
            "not valid TOML for Python's parser: arrays or inline tables nested too deeply "
            f"({depth:,} levels open at this line)"
        )
        raise ConfigError(path, [Problem(message, line=deep_line)]) from None
    except tomllib.TOMLDecodeError as exc:
        # Python 3.14 has exc.lineno; before, the line is only in the message
        line = getattr(exc, "lineno", None)
        if line is None and (found := re.search(r"at line (\d+)", str(exc))):
            line = int(found.group(1))
        raise ConfigError(path, [Problem(f"not valid TOML: {exc}", line=line)]) from None
    if _deeper_than(document, DEPTH_MAX):  # dotted keys: parsed without recursing
        depth, deep_line = deepest(text)
        message = (
            f"nested too deeply: keys, tables and arrays more than {DEPTH_MAX} levels deep "
            f"({depth:,} at this line)"
        )
        raise ConfigError(path, [Problem(message, line=deep_line)])
    return document, text


DEPTH_MAX = 64  # levels of tables and arrays; ours need three (variants.0.subject.de)


def _deeper_than(document: dict[str, Any], limit: int) -> bool:
    """Whether tables and arrays nest more than ``limit`` deep, walked without recursion:
    ``a.a.a… = 1`` thousands of keys deep is parsed (dotted keys are a loop), and then every
    recursive walk of it — the type check's ``json.dumps``, pydantic — raised RecursionError."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, level = stack.pop()
        if level > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack += [(child, level + 1) for child in children if isinstance(child, dict | list)]
    return False


_OPEN, _CLOSE = frozenset("[{"), frozenset("]}")
_QUOTES = ('"""', "'''", '"', "'")


def deepest(text: str) -> tuple[int, int]:
    """How deep TOML's arrays, inline tables and dotted keys nest at most, and the line where
    they first do: brackets and dots in strings and comments are not counted (a table
    header's pair closes on its line). For a file too deep to read, where to look."""
    depth = most = dots = 0
    line = where = 1
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        quote = next((q for q in _QUOTES if text.startswith(q, i)), None)
        if quote is not None:  # skip the string: a basic one's \" does not close it
            j = i + len(quote)
            while j < end and not text.startswith(quote, j):
                j += 2 if text[j] == "\\" and quote[0] == '"' else 1
            line += text.count("\n", i, j)
            i = j + len(quote)
            continue
        if char == "#":
            i = text.find("\n", i)
            i = end if i < 0 else i
            continue
        if char == "\n":
            line, dots = line + 1, 0
        elif char in _OPEN or char == ".":  # a dot of a dotted key (or a number's: no matter)
            depth, dots = (depth + 1, dots) if char in _OPEN else (depth, dots + 1)
            if depth + dots > most:
                most, where = depth + dots, line
        elif char in _CLOSE:
            depth = max(depth - 1, 0)
        i += 1
    return most, where


def not_utf8(error: UnicodeDecodeError) -> Problem:
    """A file that is not UTF-8 (TOML and templates must be): where the first bad byte is."""
    line = error.object[: error.start].count(b"\n") + 1
    bad = error.object[error.start : error.start + 1]
    return Problem(f"not UTF-8 (byte {bad!r} at offset {error.start})", line=line)


def line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """Best-effort line of a dotted key; array-of-table indices (``variants.1.name``) count
    the ``[[variants]]`` headers."""
    if not loc:
        return None
    keys = [part for part in loc if not part.isdigit()]
    index = next((int(part) for part in loc if part.isdigit()), None)
    section, key = ".".join(keys[:-1]), keys[-1]
    current, seen = "", -1
    for number, line in enumerate(text.splitlines(), start=1):
        if (header := _SECTION.match(line)) is not None:
            current = header.group(2)
            if header.group(1) == "[[" and current == (section or key):
                seen += 1
            if current == ".".join(keys) and (index is None or seen == index):
                return number
            continue
        same_table = current == section and (index is None or seen == index)
        if (match := _KEY.match(line)) and match.group(1) == key and same_table:
            return number
    return line_of(text, loc[:-1]) if len(loc) > 1 else None


AT = "value_error_at"


def error_at(message: str, at: tuple[str | int, ...], value: object) -> PydanticCustomError:
    """A validator's error about a part of the value it checks (the second ``[[variants]]``'s
    name, for a check over all variants): :func:`problems` puts it at that key, its line and
    its value, where pydantic would name only the validated field."""
    where = ".".join(str(part) for part in at)
    return PydanticCustomError(AT, message, {"at": where, "value": value})


HIDDEN = "value_error_hidden"


def error_hidden(message: str) -> PydanticCustomError:
    """A validator's error whose value is not repeated (:func:`problems` leaves it out): a
    key, a credential, or text too long to print."""
    return PydanticCustomError(HIDDEN, message)


def problems(
    error: ValidationError,
    text: str,
    env_prefix: str | None = None,
    model: type[BaseModel] | None = None,
) -> list[Problem]:
    """Every validation error as a Problem with key, line and value (or the env variable);
    an unknown key of ``model`` also names the key probably meant (:func:`unknown_key`)."""
    found = []
    entries = error.errors()
    for entry in entries:
        if _emptied(entry, entries):
            continue
        loc = tuple(str(part) for part in entry["loc"])
        from_env = ""
        if env_prefix is not None:
            name = _variable(env_prefix, loc)
            from_env = f" (from environment variable {name})" if name else ""
        # an unknown key is a typo for another, whose value may be a secret: a token set as
        # RECOCAMP_ESP__TOKEN (for RECOCAMP_ESP_TOKEN) was printed with the problem
        value = None if entry["type"] in (HIDDEN, "extra_forbidden") else entry.get("input")
        if entry["type"] == AT:  # a validator that knows a more precise place named it
            loc += tuple(entry["ctx"]["at"].split("."))
            value = entry["ctx"]["value"]
        known = unknown_key(model, loc) if entry["type"] == "extra_forbidden" else ""
        message = _in_toml(entry, loc) if not from_env else entry["msg"]
        found.append(
            Problem(
                message + known + from_env,
                key=".".join(loc),
                line=None if from_env else line_of(text, loc),
                value=None if isinstance(value, dict | list) else value,
            )
        )
    return found


def _in_toml(entry: ErrorDetails, loc: tuple[str, ...]) -> str:
    """pydantic's message in the file's terms: "a valid dictionary" is a table in TOML, which
    the user writes inline or as a section (``subject = "Hi"`` where a subject per locale
    goes); other messages as pydantic words them."""
    if entry["type"] in ("dict_type", "model_type") and loc and loc[-1].isdigit():
        return "should be a table: { … }"  # an item of a list ([[variants]] written as text)
    if entry["type"] in ("dict_type", "model_type") and loc:
        return f"should be a table: {loc[-1]} = {{ … }} (inline) or a [{'.'.join(loc)}] section"
    return entry["msg"]


def unknown_key(model: type[BaseModel] | None, loc: tuple[str, ...]) -> str:
    """What an unknown key's problem adds: the key of that table probably meant, else the
    keys it has ("Extra inputs are not permitted" named none: a typo was left to be
    spotted). Empty where the table's keys cannot be told."""
    known = _keys_at(model, loc[:-1]) if model is not None else None
    if not known:
        return ""
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close:
        return f": no such key here (did you mean {close[0]!r}?)"
    return ": no such key here (the keys here: " + ", ".join(sorted(known)) + ")"


def _keys_at(model: type[BaseModel], path: tuple[str, ...]) -> list[str] | None:
    """The keys of the table at ``path`` in ``model`` (list indexes skipped)."""
    current: type[BaseModel] | None = model
    for part in path:
        if part.isdigit():
            continue
        field = current.model_fields.get(part) if current is not None else None
        current = _model_in(field.annotation) if field is not None else None
    return list(current.model_fields) if current is not None else None


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model a field holds: itself, or inside an optional, a tuple or a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _emptied(entry: ErrorDetails, entries: list[ErrorDetails]) -> bool:
    """A list too short only because its items were refused: pydantic drops each item it
    refuses and then counts what is left, so ``legal_basis = ["double-opt-in"]`` was also
    "Tuple should have at least 1 item after validation, not 0". The items' problems say it."""
    if entry["type"] != "too_short":
        return False
    loc = entry["loc"]
    return any(len(o["loc"]) > len(loc) and o["loc"][: len(loc)] == loc for o in entries)


def _variable(env_prefix: str, loc: tuple[str, ...]) -> str | None:
    """The environment variable that set the value at ``loc``: named after the key, or
    after a list or table holding it (``RECOCAMP_MEASURE__SNAPSHOT_WINDOW_DAYS`` for
    ``measure.snapshot_window_days.1``); None when the value is the file's."""
    import os

    for end in range(len(loc), 0, -1):
        name = env_prefix + "__".join(loc[:end]).upper()
        if name in os.environ:
            return name
    return None


M = TypeVar("M")

# strict validation's errors for a value of the wrong scalar type, and what to write instead
_EXPECTED = {
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string (in quotes)",
}


def validated(
    path: Path,
    text: str,
    data: dict[str, Any],
    model: type[BaseModel],
    build: Callable[[], M],
    env_prefix: str | None = None,
) -> M:
    """``build()`` (the model from ``data``, as pydantic's lax mode reads it) when it passes
    and every value of ``data`` has the type the model expects; else a ConfigError with every
    problem of either kind."""
    found: list[Problem] = []
    result: M | None = None
    try:
        result = build()
    except ValidationError as exc:
        found = problems(exc, text, env_prefix, model)
    keys = {problem.key for problem in found}
    found += [p for p in wrong_types(model, data, text) if p.key not in keys]
    if found or result is None:
        raise ConfigError(path, found)
    return result


def wrong_types(model: type[BaseModel], data: dict[str, Any], text: str) -> list[Problem]:
    """Values of another type than the model's (``"10"`` for a number, ``1`` for a boolean):
    ``data`` is validated strictly as JSON, where an enum, a path or a time is still read from
    a string (JSON has no other way to write one), and TOML's own dates and times become
    their ISO text first."""
    raw = json.dumps(data, default=_iso)
    try:
        model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        return [_wrong_type(entry, text) for entry in exc.errors() if entry["type"] in _EXPECTED]
    return []


def _iso(value: object) -> str:
    if isinstance(value, date | time):  # datetime is a date
        return value.isoformat()
    raise TypeError(f"not a TOML value: {type(value).__name__}")


def _wrong_type(entry: Any, text: str) -> Problem:
    loc = tuple(str(part) for part in entry["loc"])
    value = entry.get("input")
    return Problem(
        f"must be {_EXPECTED[entry['type']]}, not {_kind(value)}",
        key=".".join(loc),
        line=line_of(text, loc),
        value=None if isinstance(value, dict | list) else value,
    )


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "a string in quotes"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, int):
        return "a number"
    return "a table" if isinstance(value, dict) else "an array"
