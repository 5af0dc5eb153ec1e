"""A file store's ledger: one file of entries per UTC day beside the store's snapshot.

``user_cost.json.ledger-2026-12-06`` holds that day's charges, one JSON line each
(:mod:`..ledger`). Writers append under the store's lock, in the write that applies the
charges (a second append to a file already open, no lock and no read of its own); files older
than the retention are deleted as days turn, so the ledger is bounded by time. Readers take no
lock and read only the days asked for; a line torn by a crash is skipped with a warning (and a
writer that finds one ends it first, so the next entry stays whole).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from .. import ledger
from ..errors import StoreCorruptError, StoreError
from ..ledger import SETTLED_SECONDS, LedgerEntry, LedgerTotal
from ..limits import MAX_AMOUNT
from ._journal import open_in_folder, write_atomically

logger = logging.getLogger(__name__)

_DAY_SUFFIX = re.compile(r"\.ledger-(\d{4}-\d{2}-\d{2})")
_READ_CHUNK = 1 << 20


def _day_of(moment: float) -> date:
    return datetime.fromtimestamp(moment, UTC).date()


class LedgerFiles:
    """The day files of one store. Appends run under the store's lock; reads need none."""

    def __init__(self, path: Path, retention_days: float, fsync: bool = False) -> None:
        self.path = path
        self.retention_days = ledger.check_retention_days(retention_days)
        self.fsync = fsync
        self._fd: int | None = None
        self._day: date | None = None
        self._end = 0  # where this process's last append ended
        self._bounds = (0.0, 0.0)  # the open day's first instant, and the next day's

    def file_of(self, day: date) -> Path:
        return self.path.with_name(f"{self.path.name}.ledger-{day.isoformat()}")

    def days(self) -> list[date]:
        """The days that have a file, oldest first."""
        prefix = self.path.name
        found = []
        with os.scandir(self.path.parent) as entries:
            for item in entries:
                if item.name.startswith(prefix):
                    match = _DAY_SUFFIX.fullmatch(item.name[len(prefix) :])
                    if match:
                        try:
                            found.append(date.fromisoformat(match.group(1)))
                        except ValueError:
                            continue
        return sorted(found)

    # -- writing (under the store's lock) -------------------------------------------------

    def append(self, entries: Sequence[LedgerEntry], now: float) -> None:
        """Append the entries of one write to their days' files; as the day turns (``now``, the
        store's clock), delete the files past the retention.

        :raises StoreError: a file could not be written (the charges are in the journal already)."""
        by_day: dict[date, list[str]] = {}
        first, end = self._bounds
        for item in entries:
            day = self._day if first <= item.time < end else _day_of(item.time)  # most go to the open day
            by_day.setdefault(day, []).append(ledger.encode(item))  # type: ignore[arg-type]
        for day, lines in by_day.items():
            self._append_day(day, ("\n".join(lines) + "\n").encode(), now)

    def _append_day(self, day: date, data: bytes, now: float) -> None:
        target = self.file_of(day)
        try:
            if day != self._day:
                self._open(day, now)
            assert self._fd is not None
            size = os.fstat(self._fd).st_size
            if size and size != self._end and os.pread(self._fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # another writer died mid-line: end its line, keep ours whole
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
            if self.fsync:
                os.fsync(self._fd)
            self._end = size + written
        except StoreCorruptError:
            raise
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot write ledger {str(target)!r}: {exc}") from exc

    def _open(self, day: date, now: float) -> None:
        self.close()
        self.prune(now)
        self._fd = open_in_folder(self.file_of(day), os.O_RDWR | os.O_APPEND | os.O_CREAT)
        self._day, self._end = day, -1
        self._bounds = (_start_of(day), _start_of(day + timedelta(days=1)))

    def prune(self, now: float) -> list[Path]:
        """Delete the day files older than the retention; the files deleted."""
        oldest = _day_of(now) - timedelta(days=int(self.retention_days))
        gone = []
        for day in self.days():
            if day >= oldest:
                break
            for target in (self.totals_of(day), self.file_of(day)):
                try:
                    target.unlink()
                    gone.append(target)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    logger.warning("cannot delete old ledger file %s: %s", target, exc)
        return gone

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._day, self._bounds = None, None, (0.0, 0.0)

    # -- reading (no lock) ----------------------------------------------------------------

    def read(self, since: float, until: float) -> Iterator[LedgerEntry]:
        """The entries from ``since`` (included) to ``until`` (excluded), in file order."""
        first, last = _day_of(since), _day_of(min(until, ledger.MAX_READ_TIME))
        for day in self.days():
            if first <= day <= last:
                whole_days = since <= _start_of(day) and _start_of(day + timedelta(days=1)) <= until
                items = self._read_day(day)
                yield from items if whole_days else ledger.in_period(items, since, until)

    def read_totals(self, since: float, until: float, now: float) -> Iterator[LedgerEntry | LedgerTotal]:
        """What :meth:`read` gives, but each whole day within the period that ended more than
        :data:`SETTLED_SECONDS` before ``now`` as its totals (:func:`.ledger.totals_of`), from a
        ``.totals`` file beside its day file, made on first use and made again once the day
        file has grown (a writer whose clock lags)."""
        for day in self.days():
            start, end = _start_of(day), _start_of(day + timedelta(days=1))
            if end <= since or start >= until:
                continue
            if since <= start and end <= until and end + SETTLED_SECONDS <= now:
                yield from self._totals(day)
            else:
                yield from ledger.in_period(self._read_day(day), since, until)

    def _totals(self, day: date) -> list[LedgerTotal]:
        source, target = self.file_of(day), self.totals_of(day)
        size = self._size(day)
        if size is None:
            return []  # pruned meanwhile
        lines = _lines(target)
        if _header(lines, size) is not None:
            assert lines is not None
            kept = ledger.decode_totals(lines[1:])
            if kept is not None:
                return kept
            logger.warning("ledger totals %s unreadable; summing the day again", target)
        totals = ledger.totals_of(self._read_day(day), _start_of(day))
        if lines is None:
            return totals  # a link, or a file this process may not read: never written over
        header = {"of_bytes": size, "cost": math.fsum(item.cost for item in totals)}
        rows = [json.dumps(header), *map(ledger.encode_total, totals)]
        try:
            write_atomically(target, ("\n".join(rows) + "\n").encode())
        except StoreError as exc:  # a cache: the report goes on without it
            logger.warning("cannot keep the totals of %s: %s", source, exc)
        return totals

    def day_costs(self, since: float, until: float, now: float) -> dict[float, float]:
        """What was charged on each UTC day that has a file and meets the period, by the day's
        first instant: a day that is over from its totals file's first line alone (made if
        need be), another from its entries."""
        costs = {}
        for day in self.days():
            start, end = _start_of(day), _start_of(day + timedelta(days=1))
            if end <= since or start >= until:
                continue
            if end + SETTLED_SECONDS <= now:
                header = _header(_lines(self.totals_of(day), first_only=True), self._size(day))
                costs[start] = header["cost"] if header else math.fsum(t.cost for t in self._totals(day))
            else:
                costs[start] = math.fsum(item.cost for item in self._read_day(day))
        return costs

    def _size(self, day: date) -> int | None:
        try:
            return os.stat(self.file_of(day), follow_symlinks=False).st_size
        except FileNotFoundError:
            return None

    def totals_of(self, day: date) -> Path:
        return self.file_of(day).with_name(self.file_of(day).name + ".totals")

    def _read_day(self, day: date) -> Iterator[LedgerEntry]:
        target = self.file_of(day)
        try:
            fd = open_in_folder(target, os.O_RDONLY)
        except FileNotFoundError:
            return  # pruned meanwhile
        except OSError as exc:
            raise StoreError(f"cannot read ledger {str(target)!r}: {exc}") from exc
        torn = 0
        with open(fd, "rb") as file:
            rest = b""
            while chunk := file.read(_READ_CHUNK):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                items, bad = ledger.decode_many(lines)
                torn += bad
                yield from items
            if rest:  # the last line: whole unless a writer is still at it or died mid-line
                item = ledger.decode(rest)
                if item is None:
                    torn += 1
                else:
                    yield item
        if torn:
            logger.warning("ledger %s: skipped %d torn or unreadable line(s)", target, torn)


def _header(lines: list[bytes] | None, size: int | None) -> dict[str, Any] | None:
    """The first line of a day's totals file if it sums the ``size`` bytes its day file has now
    and its cost is sane (else None: the day file grew since, a writer whose clock lags; or the
    file is missing, refused or damaged: it is made again)."""
    if not lines or size is None:
        return None
    try:
        header = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("of_bytes") != size:
        return None
    cost = header.get("cost")
    return header if type(cost) is float and 0 <= cost <= MAX_AMOUNT else None  # NaN fails the range


def _lines(target: Path, first_only: bool = False) -> list[bytes] | None:
    """A totals file's lines: none if it is missing, None if it is refused (a link, a file this
    process may not read), which is then never written over."""
    try:
        fd = open_in_folder(target, os.O_RDONLY)
    except FileNotFoundError:
        return []
    except (OSError, StoreCorruptError) as exc:
        logger.warning("ledger totals %s unreadable (%s); summing the day without it", target, exc)
        return None
    with open(fd, "rb") as file:
        return (file.readline() if first_only else file.read()).split(b"\n")


def _start_of(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
