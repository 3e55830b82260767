"""Reading TOML files people write (settings, campaigns) with errors that say where.

``tomllib`` keeps no positions, so :func:`line_of` finds a dotted key's line by scanning the
text (tables, arrays of tables and inline keys); pydantic's ``ValidationError`` entries become
:class:`~recocamp.errors.Problem` objects with the dotted key, its line and the bad value.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recocamp.errors import ConfigError, Problem

_SECTION = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed document and its text; unreadable or invalid files are ConfigErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [Problem(f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [not_utf8(exc)]) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        # Python 3.14 has exc.lineno; before, the line is only in the message
        line = getattr(exc, "lineno", None)
        if line is None and (found := re.search(r"at line (\d+)", str(exc))):
            line = int(found.group(1))
        raise ConfigError(path, [Problem(f"not valid TOML: {exc}", line=line)]) from None


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


def problems(error: ValidationError, text: str, env_prefix: str | None = None) -> list[Problem]:
    """Every validation error as a Problem with key, line and value (or the env variable)."""
    found = []
    for entry in error.errors():
        loc = tuple(str(part) for part in entry["loc"])
        from_env = ""
        if env_prefix is not None:
            import os

            name = env_prefix + "__".join(loc).upper()
            from_env = f" (from environment variable {name})" if name in os.environ else ""
        value = entry.get("input")
        found.append(
            Problem(
                entry["msg"] + from_env,
                key=".".join(loc),
                line=None if from_env else line_of(text, loc),
                value=None if isinstance(value, dict | list) else value,
            )
        )
    return found
