"""One exception tree for everything recocamp raises on purpose.

::

    RecocampError
    ├── ConfigError          settings.toml, campaigns, templates: file + key path (+ line)
    │   └── TemplateLimitError   a render ran past a limit of [templates]: template + line
    ├── DataImportError      a source file that cannot be imported: file + every bad line/column
    ├── StoreError           the database is missing, not migrated or unreachable
    ├── OrderConflictError   orders already stored with other lines (an order is written once)
    ├── SharedAddressError   a privacy request by customer id whose address other customers hold
    │   └── CoverageCountError   an erasure of every id at an address found another count
    ├── VoidLinkError        an erasure or export through a link of a record erased since
    ├── ModelError           recommender training / loading problems
    ├── Interrupted          a run stopped early because the worker is shutting down
    └── DeliveryError        sending through an email service provider
        ├── TransientDeliveryError   retry the request later (timeouts, 429, 5xx)
        ├── PermanentDeliveryError   the request is refused for good
        └── BatchTooLargeError       HTTP 413: split the batch
    (an error about a single recipient in a batch is a SendResult, not an exception)

Errors a person can cause say *where* (file, line or key, the bad value), modelled on
Jinja's ``TemplateSyntaxError``; callers can print ``str(error)`` as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


# What masking hides: wider than EMAIL (which finds addresses to erase in files) — anything
# joined to an "@" up to a space, a quote or a bracket, so "bob@localhost", "x@[10.0.0.1]"
# and "o'brien@example.com" go whole, and a quoted id keeps its quotes
_MASKED = re.compile(
    r"""(?:[^\s"'<>(),;@]+(?:'[^\s"'<>(),;@]+)*)@(?:\[[^\]\s]*\]|[^\s"'<>(),;@]+)"""
)


def mask_addresses(text: str) -> str:
    """``text`` with every e-mail address replaced by ``<address>``: for messages that reach
    logs, error bodies or stored error columns, whoever wrote them (a provider's error text
    can quote the recipient)."""
    return _MASKED.sub("<address>", text) if "@" in text else text


SHOWN = 200  # characters of a long text value a problem shows


def shown(value: object) -> object:
    """A value as a problem prints it: a long text cut (a 1.5 MB description in a campaign
    file made a one-line error of 1.5 MB, logged and stored with the worker's check run)."""
    if isinstance(value, str) and len(value) > SHOWN:
        return f"{value[:SHOWN]}… ({len(value):,} characters)"
    return value


class RecocampError(Exception):
    """Base class of every error recocamp raises deliberately."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong at one place: a key path or a line/column, and the bad value."""

    message: str
    key: str | None = None
    line: int | None = None
    column: str | None = None
    value: object = None
    path: Path | None = None  # the file it is in when not the error's own (a campaign's template)

    def where(self) -> str:
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        if self.key is not None:
            parts.append(f"key {self.key!r}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        value = "" if self.value is None else f" (value: {shown(self.value)!r})"
        return f"{where}: {self.message}{value}" if where else f"{self.message}{value}"


class _ProblemsError(RecocampError):
    """An error about one file that lists every problem found in it at once."""

    def __init__(self, path: Path | str, problems: list[Problem], *, more: int = 0) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        self.more = more
        super().__init__(self._render())

    def __reduce__(self) -> tuple[object, ...]:
        # rebuilt from its own arguments, not its message: errors cross process boundaries
        # (the delivering processes report theirs to the caller) pickled
        return partial(type(self), more=self.more), (self.path, self.problems)

    def _render(self) -> str:
        lines = [f"{self.path}: {len(self.problems) + self.more} problem(s)"]
        lines += [f"  {problem.path or self.path}: {problem}" for problem in self.problems]
        if self.more:
            lines.append(f"  … and {self.more} more")
        return "\n".join(lines)


class ConfigError(_ProblemsError):
    """A settings, campaign or template file is invalid."""


class TemplateLimitError(ConfigError):
    """Rendering a template ran past a limit of ``[templates]`` (time, output size, loop
    iterations, number size, nesting depth): that one render fails, nothing else. One line,
    as it is recorded with the message it failed."""

    def _render(self) -> str:
        return "; ".join(f"{problem.path or self.path}: {problem}" for problem in self.problems)


class DataImportError(_ProblemsError):
    """A source file cannot be imported; nothing of it was written."""


class StoreError(RecocampError):
    """The database is unreachable, not migrated, or refused an operation."""


class OrderConflictError(RecocampError):
    """Orders that are already stored with other lines (or, posted to the API, under another
    customer: ``stored`` says which): an order is written whole, once, and a different order
    under the same id is refused rather than mixed into it."""

    def __init__(self, order_ids: list[str], stored: str = "with other lines") -> None:
        self.order_ids, self.stored = list(order_ids), stored
        shown = ", ".join(repr(order_id) for order_id in self.order_ids[:20])
        more = f" and {len(self.order_ids) - 20} more" if len(self.order_ids) > 20 else ""
        super().__init__(f"already stored {stored}: order(s) {shown}{more}")

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.order_ids, self.stored)


class SharedAddressError(RecocampError):
    """A privacy request (export, erasure) names a customer whose e-mail address other
    customer ids hold too: one person with two accounts, or two people sharing an address.
    Which it is, only the operator can tell, so nothing is done until they say whom the
    request covers (``privacy.Scope``). Names the customer ids, never the address."""

    SHOWN = 20  # ids listed; a placeholder address can be held by thousands

    def __init__(self, customer_id: str, others: list[str]) -> None:
        self.customer_id = customer_id
        self.others = list(others)
        shown = ", ".join(repr(other) for other in self.others[: self.SHOWN])
        more = f" and {len(self.others) - self.SHOWN} more" if len(self.others) > self.SHOWN else ""
        super().__init__(
            f"the e-mail address of customer {customer_id!r} is also held by customer id(s) "
            f"{shown}{more}: the request is ambiguous, nothing was done"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.customer_id, self.others)


class CoverageCountError(SharedAddressError):
    """An erasure of every customer id holding an address (``Scope.ALL_MATCHING``) found
    another number of ids than the operator expected (or was not told the number): a
    placeholder address held by hundreds must not erase them all on one flag. Names the
    count and the ids (at most :attr:`SHOWN`), never the address; nothing is done."""

    def __init__(self, customer_id: str, covered: list[str], expected: int | None) -> None:
        self.customer_id = customer_id
        self.others = list(covered)
        self.expected = expected
        shown = ", ".join(repr(one) for one in covered[: self.SHOWN])
        more = f" and {len(covered) - self.SHOWN} more" if len(covered) > self.SHOWN else ""
        said = (
            "no count was given"
            if expected is None
            else f"{expected} {'was' if expected == 1 else 'were'} expected"
        )
        held = (
            f"the e-mail address of customer {customer_id!r} is held by {len(covered)} "
            if len(covered) > 1
            else f"no other customer id holds the e-mail address of customer {customer_id!r}: "
            f"it covers {len(covered)} "
        )
        ids = "customer id" if len(covered) == 1 else "customer ids"
        RecocampError.__init__(self, f"{held}{ids} ({shown}{more}); {said}: nothing was done")

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.customer_id, self.others, self.expected)


class VoidLinkError(RecocampError):
    """An erasure or an export asked for through a customer's link (the preferences page)
    whose record was erased at or after the link was issued: the link belongs to the erased
    record, and must neither erase nor hand out a new one made by a later sign-up. Checked
    in the erasing transaction, or in the snapshot the export reads; nothing is done."""


class SubjectError(RecocampError):
    """One e-mail's subject failed to render for that customer's data (the template alone
    passed ``check``): that customer is skipped (``not_rendered``), the run goes on."""


class ModelError(RecocampError):
    """Training, loading or scoring a recommender failed."""


class Interrupted(RecocampError):
    """A run stopped between two chunks because the worker was told to stop (SIGTERM).

    Nothing is half-done: what was enqueued is recorded, and the run is resumed with the
    same instant (hence the same send keys) by the next scheduling worker.
    """


class DeliveryError(RecocampError):
    """Sending through an email service provider failed."""


class TransientDeliveryError(DeliveryError):
    """The whole request failed but is worth retrying later (timeouts, HTTP 429, HTTP 5xx).

    ``retry_after`` is the provider's hint in seconds (Retry-After, rate-limit reset).
    ``ambiguous`` means the provider may have accepted the messages before the failure (a
    read timeout, a dropped connection): the sender must look them up before resending.
    ``status`` is the HTTP status of the provider's answer (None: no answer came): a 502 or
    504 is ambiguous and still an answer of an overloaded provider, to back off from.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        ambiguous: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        rebuild = partial(
            type(self), retry_after=self.retry_after, ambiguous=self.ambiguous, status=self.status
        )
        return rebuild, self.args


class PermanentDeliveryError(DeliveryError):
    """The whole request was refused for good (malformed, sender not allowed): fail it."""


class BatchTooLargeError(DeliveryError):
    """HTTP 413: the request was too big; the sender splits the batch and tries again."""
