"""HTML form posts (``application/x-www-form-urlencoded``) read with limits, for every page
that takes one (the preferences page, the feedback page).

A form's fields are what a browser sends, but anyone can post anything: bytes that are not
UTF-8, thousands of fields, a megabyte in one field, digits that are not ASCII (``'²'``
passes ``str.isdigit()`` but ``int('²')`` raises). Everything here raises :class:`FormError`
(the page answers 400 with a page, never a 500), which never quotes the value, and names a
field only by a printable name with any address in it masked (the sender chose the name).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from urllib.parse import parse_qsl

from recocamp.errors import RecocampError, mask_addresses

MAX_FIELDS = 20  # the largest form (preferences: action, channel, frequency, …) has five
MAX_VALUE = 4000  # a comment of 2000 characters, written in any script


class FormError(RecocampError):
    """A form post that cannot be read or breaks a rule; ``field`` is the field at fault
    (None: the body as a whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def fields(body: bytes, max_fields: int = MAX_FIELDS) -> dict[str, str]:
    """The fields of a form post, each sent once. Strict UTF-8: a browser never sends
    anything else for a UTF-8 page. A field sent twice is refused, naming it, as the JSON
    bodies refuse a key given twice (``bodies.unique_keys``): the last value won, so
    ``action=save&action=erase&confirm=on`` erased the customer, and no page form has a
    field a browser sends more than once (no checkbox group sharing a name, no
    ``<select multiple>``)."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields, errors="strict")
    except UnicodeDecodeError:
        raise FormError("the form is not UTF-8") from None
    except ValueError:  # parse_qsl: more than max_num_fields
        raise FormError(f"the form has more than {max_fields} fields") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if len(name) > 64 or not name.isprintable():  # NUL, a line break: a forged log line
            raise FormError("a field name is too long or holds a control character")
        if len(value) > MAX_VALUE or "\x00" in value:
            # named, as the sender wrote it, but for an address (no address in error bodies)
            problem = f"is longer than {MAX_VALUE} characters or holds NUL"
            raise FormError(problem, mask_addresses(name))
        if name in form:
            raise FormError("is sent more than once", mask_addresses(name))
        form[name] = value
    return form


def integer(form: Mapping[str, str], name: str, allowed: Collection[int]) -> int:
    """A whole number (ASCII digits only) that is one of ``allowed``."""
    raw = form.get(name, "").strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise FormError("must be a whole number", name)
    value = int(raw)
    if value not in allowed:
        raise FormError(f"must be one of {', '.join(map(str, sorted(allowed)))}", name)
    return value


def choice(form: Mapping[str, str], name: str, allowed: Collection[str], default: str) -> str:
    """One of ``allowed`` (``default`` when the field is absent)."""
    value = form.get(name, default)
    if value not in allowed:
        raise FormError(f"must be one of {', '.join(allowed)}", name)
    return value


def checked(form: Mapping[str, str], name: str) -> bool:
    """A checkbox: ticked when sent as ``on`` (HTML's default value)."""
    return form.get(name) == "on"
