"""The ledger: one line per charge, kept by each store, so spend has a history that window
resets and ``reset`` leave alone.

A charge applied (never one skipped as charged already) becomes a :class:`LedgerEntry`: when,
the budget it was charged to first (its user, else its team or tag), the other budgets and the
call's tags, the model, prompt and completion tokens, cost and call id. Stores keep entries as
JSON arrays, one per line (:func:`encode`); :func:`decode` reads one back and refuses anything
that is not a whole, sane entry, so a line torn by a crash is skipped (and counted), never
fatal. Reports (:mod:`.reports`) read entries through ``BudgetStore.ledger(since, until)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .errors import ConfigurationError
from .limits import MAX_AMOUNT, MAX_TEXT_BYTES, MAX_TIMESTAMP
from .subjects import kind_of

# The default and the bounds of how long stores keep ledger entries.
DEFAULT_RETENTION_DAYS = 90
MAX_RETENTION_DAYS = 3650
# Reads end here: a day this far ahead is not listed (the ledger never holds future entries).
MAX_READ_TIME = MAX_TIMESTAMP - 2 * 86400.0
# A day's totals are kept once it has been over this long: a charge deferred in a process
# (charge_later) may reach the ledger a little after its day ended.
SETTLED_SECONDS = 600.0
# A call's tags beyond its budgets: subjects.MAX_TAGS, plus its user's team and its own team.
_MAX_SUBJECTS = 40
MAX_TOKENS = 10**12  # per call: far above any context window

_text = json.encoder.encode_basestring_ascii  # a JSON string, in C


class Usage(NamedTuple):
    """What a caller knows of a call beyond its cost, for its ledger entry."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    tags: tuple[str, ...] = ()  # the call's tags as keys ("tag:x"), with a budget or not


class LedgerEntry(NamedTuple):
    time: float
    user: str  # the budget charged first: the call's user, else its team or first tag
    subjects: tuple[str, ...]  # the other budgets charged and the call's tags ("team:x", "tag:y")
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    call_id: str | None

    @property
    def teams(self) -> tuple[str, ...]:
        return _names(self.user, self.subjects, "team")

    @property
    def tags(self) -> tuple[str, ...]:
        return _names(self.user, self.subjects, "tag")

    @property
    def calls(self) -> int:
        """One entry, one call (a :class:`LedgerTotal` counts many)."""
        return 1


class LedgerTotal(NamedTuple):
    """The charges of one UTC day to the same budgets for the same model, summed: what a
    report needs of a day that is over, in far fewer rows than its entries."""

    time: float  # the day's first instant
    user: str
    subjects: tuple[str, ...]
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    calls: int

    @property
    def teams(self) -> tuple[str, ...]:
        return _names(self.user, self.subjects, "team")

    @property
    def tags(self) -> tuple[str, ...]:
        return _names(self.user, self.subjects, "tag")


def _names(user: str, subjects: tuple[str, ...], kind: str) -> tuple[str, ...]:
    """The names of the teams (or tags) among a charge's budgets: ``team:red`` is ``red``."""
    return tuple(key[len(kind) + 1 :] for key in (user, *subjects) if kind_of(key) == kind)


def totals_of(entries: Iterable[LedgerEntry], day_start: float) -> list[LedgerTotal]:
    """The entries of one day summed by budgets and model."""
    sums: dict[tuple[str, tuple[str, ...], str], list[Any]] = {}
    for item in entries:
        key = (item.user, item.subjects, item.model)
        row = sums.get(key)
        if row is None:
            sums[key] = [item.prompt_tokens, item.completion_tokens, item.cost, 1]
        else:
            row[0] += item.prompt_tokens
            row[1] += item.completion_tokens
            row[2] += item.cost
            row[3] += 1
    return [LedgerTotal(day_start, *key, *row) for key, row in sums.items()]


def check_usage(usage: object) -> Usage | None:
    """``usage`` as given to a store's charge: None, or a Usage of sane token counts and tag keys."""
    if usage is None:
        return None
    if not isinstance(usage, Usage):
        raise ConfigurationError(f"usage must be a ledger.Usage, got {type(usage).__name__}")
    for name in ("prompt_tokens", "completion_tokens"):
        value = getattr(usage, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
            raise ConfigurationError(f"usage {name} must be a whole number from 0 to {MAX_TOKENS}, got {value!r}")
    if len(usage.tags) > _MAX_SUBJECTS:
        raise ConfigurationError(f"usage has {len(usage.tags)} tags; at most {_MAX_SUBJECTS}")
    for tag in usage.tags:
        if not isinstance(tag, str) or kind_of(tag) != "tag" or len(tag.encode()) > MAX_TEXT_BYTES:
            raise ConfigurationError(f"usage tags must be tag keys such as 'tag:search', got {tag!r:.80}")
    return usage


def usage_to_json(usage: Usage) -> dict[str, object]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "tags": list(usage.tags),
    }


def usage_from_json(value: object) -> Usage:
    """A Usage sent as JSON (the budget server's ``usage`` field), checked."""
    if not isinstance(value, dict) or not set(value) <= {"prompt_tokens", "completion_tokens", "tags"}:
        raise ConfigurationError("usage must be an object of prompt_tokens, completion_tokens and tags")
    tags = value.get("tags", [])
    if not isinstance(tags, list):
        raise ConfigurationError(f"usage tags must be a list, got {type(tags).__name__}")
    usage = Usage(value.get("prompt_tokens", 0), value.get("completion_tokens", 0), tuple(tags))
    checked = check_usage(usage)
    assert checked is not None
    return checked


def entry(
    now: float, charged: Sequence[str], model: str, cost: float, call_id: str | None, usage: Usage | None
) -> LedgerEntry:
    """The entry of a charge applied to the budgets ``charged`` (the first keeps the call)."""
    subjects = list(charged[1:])
    if usage is not None:
        subjects += [tag for tag in dict.fromkeys(usage.tags) if tag not in subjects and tag != charged[0]]
    tokens = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
    return LedgerEntry(now, charged[0], tuple(subjects), model, *tokens, cost, call_id)


def entries_of(
    now: float,
    changed: Mapping[str, object],
    user: str,
    model: str,
    cost: float,
    call_id: str | None,
    usage: Usage | None,
) -> list[LedgerEntry]:
    """The entry of one charge whose change is ``changed`` (records by key): none if it changed
    nothing (a call id charged already)."""
    if not changed:
        return []
    keys = [user, *(key for key in changed if key != user)]
    return [entry(now, keys, model, cost, call_id, usage)]


def encode(item: LedgerEntry) -> str:
    """One line of JSON (without its newline), ASCII only. Written out by hand: the writer
    encodes every charge, and this is several times faster than a JSONEncoder (``repr`` of a
    finite float is JSON; store values are checked finite)."""
    time, user, subjects, model, prompt, completion, cost, call_id = item
    keys = ",".join(map(_text, subjects))
    call = "null" if call_id is None else _text(call_id)
    return f"[{time!r},{_text(user)},[{keys}],{_text(model)},{prompt:d},{completion:d},{cost!r},{call}]"


def encode_total(item: LedgerTotal) -> str:
    """One line of JSON: a total is written as an entry whose last field counts its calls."""
    return encode(LedgerEntry(*item[:7], None)).removesuffix("null]") + f"{item.calls:d}]"


def decode_totals(lines: Sequence[bytes]) -> list[LedgerTotal] | None:
    """The totals of a file's lines; None if one of them is not a sane total (the file is then
    made again from its day's entries)."""
    try:
        raws = json.loads(b"[" + b",".join(line for line in lines if line.strip()) + b"]")
    except ValueError:
        return None
    totals = []
    for raw in raws:
        calls = raw[7] if type(raw) is list and len(raw) == 8 else None
        if type(calls) is not int or not 0 < calls <= MAX_TOKENS:
            return None
        raw[7] = None
        item = _entry_of(raw)
        if item is None:
            return None
        totals.append(LedgerTotal(*item[:7], calls))
    return totals


def encode_any(item: LedgerEntry | LedgerTotal) -> str:
    """An entry or a day's total as one line (a total's last field is an integer, an entry's a
    call id or null)."""
    return encode_total(item) if isinstance(item, LedgerTotal) else encode(item)


def decode_any(lines: Sequence[bytes]) -> list[LedgerEntry | LedgerTotal] | None:
    """The entries and totals of lines that :func:`encode_any` wrote; None if one is not sane."""
    items: list[LedgerEntry | LedgerTotal] = []
    for line in lines:
        if not line.strip():
            continue
        if line.rstrip().endswith(b"]") and line.rstrip()[-2:-1].isdigit():
            totals = decode_totals([line])
            if totals is None:
                return None
            items.extend(totals)
        else:
            item = decode(line)
            if item is None:
                return None
            items.append(item)
    return items


def decode(line: bytes | str) -> LedgerEntry | None:
    """The entry a line holds, or None if it is not a whole, sane entry (a torn line, say)."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    return _entry_of(raw)


def _entry_of(raw: object) -> LedgerEntry | None:
    # On every line a report reads: exact type tests (JSON gives no subclasses) and chained
    # range tests (False for NaN and infinities), then the list itself becomes the entry.
    if type(raw) is not list or len(raw) != 8:
        return None
    time, user, subjects, model, prompt, completion, cost, call_id = raw
    if not (
        (type(time) is float or type(time) is int)
        and 0 <= time <= MAX_TIMESTAMP
        and (type(cost) is float or type(cost) is int)
        and 0 <= cost <= MAX_AMOUNT
        and type(user) is str
        and type(model) is str
        and type(subjects) is list
        and type(prompt) is int
        and type(completion) is int
        and 0 <= prompt <= MAX_TOKENS
        and 0 <= completion <= MAX_TOKENS
        and (call_id is None or type(call_id) is str)
    ):
        return None
    for key in subjects:
        if type(key) is not str:
            return None
    raw[0], raw[2], raw[6] = float(time), tuple(subjects), float(cost)
    return _new_entry(LedgerEntry, raw)


_new_entry = tuple.__new__


def decode_many(lines: Sequence[bytes]) -> tuple[list[LedgerEntry], int]:
    """The entries of many lines, and how many lines were not entries (empty lines are not
    counted). Parsed as one JSON array when every line is whole (several times faster than
    line by line), else line by line."""
    lines = [line for line in lines if line.strip()]
    try:
        raws = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        items = [decode(line) for line in lines]
        good = [item for item in items if item is not None]
        return good, len(lines) - len(good)
    good = [item for item in map(_entry_of, raws) if item is not None]
    return good, len(lines) - len(good)


def _is_number(value: object, most: float) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= most
    )


def check_retention_days(days: object) -> float:
    """How many days of ledger a store keeps: 1 to MAX_RETENTION_DAYS."""
    if isinstance(days, bool) or not isinstance(days, int | float) or not 1 <= days <= MAX_RETENTION_DAYS:
        raise ConfigurationError(f"ledger_retention_days must be a number from 1 to {MAX_RETENTION_DAYS}, got {days!r}")
    return float(days)


def check_period(since: object, until: object) -> tuple[float, float]:
    """A period of the ledger to read: timestamps, ``since`` <= ``until`` (None: unbounded)."""
    start = 0.0 if since is None else since
    end = MAX_TIMESTAMP if until is None else until
    for name, value in (("since", start), ("until", end)):
        if not _is_number(value, MAX_TIMESTAMP):
            raise ConfigurationError(f"ledger {name} must be a Unix time from 0 to {MAX_TIMESTAMP:.0f}, got {value!r}")
    assert isinstance(start, int | float) and isinstance(end, int | float)
    if start > end:
        raise ConfigurationError(f"ledger period starts ({start}) after it ends ({end})")
    return float(start), float(end)


def in_period(entries: Iterable[LedgerEntry], since: float, until: float) -> Iterable[LedgerEntry]:
    return (item for item in entries if since <= item.time < until)
