"""The Redis store's ledger: a stream beside its records, one entry per charge applied.

An entry is added by the script that applies the charge (``redis_ledger.lua``), in the same
round trip: its stream id is the charge's time in milliseconds (or the stream's last id, if that
is later: ids must grow, and another client's clock may be ahead), its one field ``e`` the entry
as :func:`..ledger.encode` writes it. Python encodes all of it but the user and subjects, which
only the script knows (the budgets it charged), so the format has one place and numbers are
Python's (cjson would round them to 14 digits).

Entries older than the retention are trimmed as entries are added, in whole stream nodes
(``MINID ~``: never more than Redis's default LIMIT a call, so a shorter retention never stalls
the server), and by count if a cap is given (``MAXLEN ~``); reads list none older than the
retention. Redis keeps the stream in memory: about 200 bytes an entry. Stream ids of the form
``<ms>-*`` need Redis 7.0; an older server charges as before, and each charge logs that its
entry could not be added.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

from .. import ledger
from ..errors import ConfigurationError
from ..ledger import LedgerEntry, Usage

logger = logging.getLogger(__name__)

# Entries read a page at a time, so a read of millions holds one page in memory.
LEDGER_PAGE = 10_000
# A stream id is the Redis server's time when the entry was added, its entry's time the client's:
# a read looks this far either side of its period for entries of clients whose clocks disagree.
LEDGER_SKEW_SECONDS = 300.0
# An entry's user and subjects as ledger.encode writes them empty: the script writes them.
_NO_USER = ',"",[]'


def check_max_entries(count: object) -> int | None:
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigurationError(f"ledger_max_entries must be a whole number above 0, got {count!r}")
    return count


def entry_args(
    now: float,
    model: str,
    cost: float,
    call_id: str | None,
    usage: Usage | None,
    retention_days: float,
    max_entries: int | None,
) -> list[str | int]:
    """A charge's ledger arguments for the script (see ``ledger_at`` in redis_ledger.lua): the
    entry's JSON before its user and after its subjects, how long entries are kept (ms, by the
    Redis server's clock), the cap ('' for none), then the number of the call's tags and the tags."""
    tokens = (0, 0) if usage is None else (usage.prompt_tokens, usage.completion_tokens)
    line = ledger.encode(LedgerEntry(now, "", (), model, *tokens, cost, call_id))
    gap = line.index(_NO_USER)  # the first quote: all before it is "[" and the time, a number
    tags = () if usage is None else usage.tags
    cap = "" if max_entries is None else max_entries
    kept_ms = math.floor(retention_days * 86400 * 1000)
    return [line[: gap + 1], line[gap + len(_NO_USER) :], kept_ms, cap, len(tags), *tags]


def failure(reply: list[Any]) -> str | None:
    """Why the script could not add a charge's entry (its last item: ["ledger", why]), if it could not."""
    last = reply[-1] if len(reply) > 2 else None
    if isinstance(last, list) and len(last) == 2 and last[0] == "ledger":
        return str(last[1])
    return None


def read(
    page_of: Callable[[str, str, int], list[Any]], since: float, until: float, name: str, ahead: float
) -> Iterator[LedgerEntry]:
    """The entries from ``since`` (included) to ``until`` (excluded), reading pages with
    ``page_of(low, high, count)`` (XRANGE, raw bytes); an entry that does not decode is skipped
    with a warning naming ``name``. Stream ids are the Redis server's times, entries' times the
    clients': ``ahead`` is how far the server's clock is ahead of the reader's, and the ids read
    reach LEDGER_SKEW_SECONDS either side of the period (clients whose clocks disagree). A reader
    whose clock is further off the server's (a test's frozen clock) reads the whole stream."""
    low, high = "-", "+"
    if abs(ahead) <= LEDGER_SKEW_SECONDS:
        low = str(max(0, math.floor((since + ahead - LEDGER_SKEW_SECONDS) * 1000)))
        high = str(max(0, math.floor((min(until, ledger.MAX_READ_TIME) + ahead + LEDGER_SKEW_SECONDS) * 1000)))
    while True:
        page = page_of(low, high, LEDGER_PAGE)
        lines = [_line_of(fields) for _, fields in page]
        items, bad = ledger.decode_many(lines)
        bad += sum(1 for line in lines if not line.strip())  # decode_many skips them uncounted
        if bad:
            logger.warning("%s: skipped %d unreadable ledger entries (of %d read)", name, bad, len(page))
        yield from ledger.in_period(items, since, until)
        if len(page) < LEDGER_PAGE:
            return
        last = page[-1][0]
        low = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def _line_of(fields: object) -> bytes:
    """The entry a stream entry's fields hold ({b"e": line}), or b"" if they are not that."""
    line = fields.get(b"e") if isinstance(fields, dict) and len(fields) == 1 else None
    return line if isinstance(line, bytes) else b""
