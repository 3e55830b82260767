"""Log output of every recocamp process, with e-mail addresses masked, one line a message.

Every command (``recocamp -v …``, the worker, ``serve``'s processes, the delivering processes
a big run starts) writes its log lines through one handler on stderr that carries
:class:`EmailRedactor`. recocamp's own log lines name customers by id only; the redactor is
the second line of defence for what others write: a provider's error text, a driver's
exception that quotes a row, a traceback whose last line is such a message.
"""

from __future__ import annotations

import logging
import re
from typing import TextIO

from recocamp.errors import mask_addresses

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# an address in a URL, its @ percent-encoded (a query's value, a path segment): up to the
# next delimiter of the URL or the line
_ENCODED = re.compile(r"""[^\s"'<>(),;@&=?/]+%40[^\s"'<>(),;@&=?/#]+""")


def one_line(text: str) -> str:
    """``text`` with each character that is not printable (``str.isprintable``: line breaks,
    tabs, controls such as ESC, U+2028, bidi overrides) written as its Python escape
    (``\\n``, ``\\x1b``, ``\\u2028``): a value someone else chose (a link's claims, a
    header, a file's field) cannot end a log line and forge the next one, nor recolour or
    reorder a terminal's. A printable text is returned as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def masked(text: str) -> str:
    """``text`` with e-mail addresses masked, those written into a URL too (``%40``)."""
    text = mask_addresses(text)
    return _ENCODED.sub("<address>", text) if "%40" in text else text


class EmailRedactor(logging.Filter):
    """Masks e-mail addresses in log records, whoever logs them: in the message (with its
    arguments), in the traceback of an exception logged with it, and in a stack logged with
    ``stack_info``; and keeps the message on its line (:func:`one_line`: a line break or
    control character in a logged value is written escaped, so no value forges a line).
    Installed on a handler, it sees every record the handler writes, from whichever logger.
    A traceback and a stack keep their lines: Python writes them, each of their lines
    starting as it does."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message or "%40" in message:
            message = masked(message)
            record.msg, record.args = message, None
        if not message.isprintable():
            record.msg, record.args = one_line(message), None
        if record.exc_info and not record.exc_text:
            # formatted here, as the handler's formatter would (it keeps ``exc_text``), so
            # that the text the handler writes is the masked one
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = masked(record.exc_text)
        if record.stack_info:
            record.stack_info = masked(record.stack_info)
        return True


def redacted_handler() -> logging.StreamHandler[TextIO]:
    """A handler writing :data:`FORMAT` lines on stderr, addresses masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(EmailRedactor())
    return handler


def configure(level: int) -> None:
    """Log records of ``level`` and above to stderr through :func:`redacted_handler`, as
    ``logging.basicConfig`` would: a process whose logging is set up already (a program that
    embeds recocamp, a test runner) keeps its own handlers."""
    logging.basicConfig(level=level, handlers=[redacted_handler()])
