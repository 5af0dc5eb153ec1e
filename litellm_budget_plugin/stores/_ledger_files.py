"""A file store's ledger: one file of entries per UTC day beside the store's snapshot.

``user_cost.json.ledger-2026-12-06`` holds that day's charges, one JSON line each
(:mod:`..ledger`). Writers append under the store's lock, in the write that applies the
charges (a second append to a file already open, no lock and no read of its own); files older
than the retention are deleted as days turn, so the ledger is bounded by time. Readers take no
lock and read only the days asked for; a line torn by a crash is skipped with a warning (and a
writer that finds one ends it first, so the next entry stays whole).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from .. import ledger
from ..errors import StoreCorruptError, StoreError
from ..ledger import LedgerEntry
from ._journal import open_in_folder

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

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        """Append the entries of one write to their days' files.

        :raises StoreError: a file could not be written (the charges are in the journal already)."""
        by_day: dict[date, list[str]] = {}
        for item in entries:
            by_day.setdefault(_day_of(item.time), []).append(ledger.encode(item))
        for day, lines in by_day.items():
            self._append_day(day, ("\n".join(lines) + "\n").encode())

    def _append_day(self, day: date, data: bytes) -> None:
        target = self.file_of(day)
        try:
            if day != self._day:
                self._open(day)
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

    def _open(self, day: date) -> None:
        self.close()
        # read too: a torn last line is looked for with pread (EBADF on a write-only descriptor)
        self._fd = open_in_folder(self.file_of(day), os.O_RDWR | os.O_APPEND | os.O_CREAT)
        self._day, self._end = day, -1
        self.prune(time.time())

    def prune(self, now: float) -> list[Path]:
        """Delete the day files older than the retention; the files deleted."""
        oldest = _day_of(now) - timedelta(days=int(self.retention_days))
        gone = []
        for day in self.days():
            if day >= oldest:
                break
            target = self.file_of(day)
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
            self._fd, self._day = None, None

    # -- reading (no lock) ----------------------------------------------------------------

    def read(self, since: float, until: float) -> Iterator[LedgerEntry]:
        """The entries from ``since`` (included) to ``until`` (excluded), in file order."""
        first, last = _day_of(since), _day_of(min(until, ledger.MAX_READ_TIME))
        for day in self.days():
            if first <= day <= last:
                whole_days = since <= _start_of(day) and _start_of(day + timedelta(days=1)) <= until
                items = self._read_day(day)
                yield from items if whole_days else ledger.in_period(items, since, until)

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


def _start_of(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
