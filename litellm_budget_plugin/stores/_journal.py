"""The files of a :class:`~litellm_budget_plugin.stores.file.FileStore` and the records they give.

- ``user_cost.json``: a snapshot, ``{user: record}`` as LiteLLM writes it (readable by people
  and by LiteLLM's own BudgetManager). Replaced atomically (temp file + ``os.replace``).
- ``user_cost.json.journal``: one JSON line per change since the snapshot, each holding the
  user's new record (its remembered call ids as a delta, see :func:`_journal_entry`). Replaying
  a line twice gives the same spend and holds, so a crash between writing a snapshot and
  starting a new journal loses and doubles nothing.

A change is one appended line, so its cost does not grow with the number of users; each
process keeps the records in memory and reads only the lines other processes appended since
its last look (one ``fstat`` of the open journal tells). When the journal outgrows the
snapshot, the writer folds it into a new snapshot and journal; the old journal, unlinked, tells
the other processes to reload. A torn last line (a writer killed mid-write) is cut off by the
next writer, under the lock.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, cast

from .. import budget
from ..budget import UserRecord
from ..errors import ConfigurationError, StoreCorruptError, StoreError

# Built once: json.dumps with any option set builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
# The journal is folded into the snapshot once it is larger than both of these.
MIN_JOURNAL_BYTES = 4 * 1024 * 1024


class Journal:
    """This process's copy of a store's records, and the snapshot and journal they come from.

    Every method runs under the store's lock (and its thread mutex).
    """

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.journal_path = path.with_name(path.name + ".journal")
        self.fsync = fsync
        self.records: dict[str, UserRecord] = {}
        self.calls: dict[str, str] = {}  # call id of a reservation -> its user
        self._fd: int | None = None
        self._snapshot_id: tuple[int, int, int] | None = None
        self._offset = 0

    def catch_up(self) -> None:
        """Bring the records up to what is on disk.

        One ``fstat`` of the open journal tells it all: more bytes are lines other processes
        appended; no link left means a compaction replaced it (or someone deleted it), so the
        records are read again from the new snapshot and journal.
        """
        try:
            if self._fd is None:
                self._reload()
                return
            journal = os.fstat(self._fd)
            if journal.st_nlink == 0 or journal.st_size < self._offset:
                self._reload()
            elif journal.st_size > self._offset:
                self._replay(journal.st_size)
        except BaseException:
            self.forget()
            raise

    def forget(self) -> None:
        """Drop what is loaded (it may be half read): the next operation starts over."""
        self.close()
        self.records, self.calls = {}, {}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

    def write(self, working: dict[str, UserRecord | None], now: float) -> bool:
        """Append the records of ``working`` that changed, in one write, then make them the
        loaded ones. Whether anything was written; on StoreError nothing was."""
        lines, replayed = [], {}
        for user, new in working.items():
            old = self.records.get(user)
            if new is not old:
                entry, replayed[user] = _journal_entry(user, old, new, now)
                lines.append(_ENCODER.encode(entry))
        if not lines:
            return False
        self._append(("\n".join(lines) + "\n").encode())
        for user, record in replayed.items():
            self._apply(user, record)  # what other processes will read, to the call id order
        return True

    def fold_due(self) -> bool:
        return self._offset > max(MIN_JOURNAL_BYTES, self._snapshot_size())

    def fold(self) -> None:
        """Write all records as a new snapshot, then start an empty journal.

        Compactions replace the journal, which is how other processes notice them, so the
        snapshot only changes under us if a person edited it: that edit is read (and a file
        we cannot read refused) before anything overwrites it.
        """
        if self._stat_snapshot() != self._snapshot_id:
            try:
                self._reload()
            except BaseException:
                self.forget()
                raise
        # One user a line: readable, and encoded by json's C encoder (indent= is pure Python).
        lines = ",\n".join(f" {json.dumps(u)}: {json.dumps(r, allow_nan=False)}" for u, r in self.records.items())
        self._write_atomically(self.path, f"{{\n{lines}\n}}\n".encode())
        self._snapshot_id = self._stat_snapshot()
        self._write_atomically(self.journal_path, b"")
        self._open()
        self._offset = 0

    def _stat_snapshot(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _snapshot_size(self) -> int:
        return 0 if self._snapshot_id is None else self._snapshot_id[2]

    def _reload(self) -> None:
        self.records, self.calls = {}, {}
        self._snapshot_id = self._stat_snapshot()
        if self._snapshot_id is not None:
            for user, record in self._load_snapshot().items():
                self._apply(user, record)
        size = self._open()
        self._offset = 0
        self._replay(size)

    def _open(self) -> int:
        """(Re)open the journal file at its path; returns its size."""
        self.close()
        try:
            self._fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open journal {str(self.journal_path)!r}: {exc}") from exc
        return os.fstat(self._fd).st_size

    def _load_snapshot(self) -> dict[str, UserRecord]:
        where = f"store file {str(self.path)!r}"
        try:
            raw = json.loads(self.path.read_bytes() or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreCorruptError(f"{where} is not valid JSON ({exc}); it was left untouched") from exc
        if not isinstance(raw, dict):
            raise StoreCorruptError(
                f"{where} must hold an object of users, not {type(raw).__name__}; it was left untouched"
            )
        try:
            return {budget.check_user(u): budget.check_record(u, r) for u, r in raw.items()}
        except ConfigurationError as exc:
            raise StoreCorruptError(f"{where}: {exc}; it was left untouched") from exc

    def _replay(self, size: int) -> None:
        assert self._fd is not None
        data = os.pread(self._fd, size - self._offset, self._offset)
        complete = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:complete].splitlines()):
            try:
                entry = json.loads(line)
                user = budget.check_user(entry["u"])
                record = _replayed_record(user, entry, self.records.get(user))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreCorruptError(
                    f"journal {str(self.journal_path)!r} has a bad entry at byte "
                    f"{self._offset} (+{number} lines): {exc}; it was left untouched"
                ) from exc
            self._apply(user, record)
        self._offset += complete
        if complete < len(data):  # a writer died mid-line; we hold the lock, so it is gone
            os.ftruncate(self._fd, self._offset)

    def _apply(self, user: str, record: UserRecord | None) -> None:
        old = self.records.get(user)
        if old is not None:
            for call_id in old.get("reservations", {}):
                self.calls.pop(call_id, None)
        if record is None:
            self.records.pop(user, None)
            return
        self.records[user] = record
        for call_id in record.get("reservations", {}):
            self.calls[call_id] = user

    def _append(self, lines: bytes) -> None:
        assert self._fd is not None
        try:
            written = os.write(self._fd, lines)
            if written != len(lines):
                raise OSError(f"short write: {written} of {len(lines)} bytes")
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            os.ftruncate(self._fd, self._offset)
            raise StoreError(f"cannot write journal {str(self.journal_path)!r}: {exc}") from exc
        self._offset += len(lines)

    def _write_atomically(self, target: Path, data: bytes) -> None:
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                if self.fsync:  # a killed process cannot lose what is in the page cache
                    os.fsync(out.fileno())
            os.replace(temp, target)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {str(target)!r}: {exc}") from exc


def _journal_entry(
    user: str, old: UserRecord | None, new: UserRecord | None, now: float
) -> tuple[dict[str, Any], UserRecord | None]:
    """The journal line for one change, and the record that replaying it gives.

    A record remembers up to 256 charged call ids; writing them all on every change would
    make a line ~10 KB, and encoding it would cost more than the rest of the change. When the
    new ids are the old ones as :func:`budget.recent_applied` keeps them at ``now`` plus some
    appended, the line holds ``now`` and the appended ids only. Replaying it twice (after a
    crash during a compaction) sets the same spend and holds, and at worst remembers an id
    for longer.
    """
    if new is None or old is None or not old.get("applied"):
        return {"u": user, "r": new}, new
    applied = new.get("applied", {})
    kept = budget.recent_applied(old.get("applied", {}), now)
    appended: dict[str, float] = {}
    replayed = kept
    if applied is not kept:
        appended = dict(itertools.islice(applied.items(), len(kept), None))
        replayed = {**kept, **appended}
        if list(replayed.items()) != list(applied.items()):  # order too: prunes go by position
            return {"u": user, "r": new}, new  # not a prune plus appends (an import, a put)
    slim = {k: v for k, v in new.items() if k != "applied"}
    record = cast(UserRecord, {**slim, "applied": replayed} if replayed else slim)
    return {"u": user, "r": slim, "t": now, "a": appended}, record


def _replayed_record(user: str, entry: dict[str, Any], old: UserRecord | None) -> UserRecord | None:
    """The record a journal line (see :func:`_journal_entry`) gives, checked."""
    raw = entry["r"]
    if raw is None:
        return None
    if "t" in entry:
        appended = entry["a"]
        if not isinstance(raw, dict) or not isinstance(appended, dict):
            raise TypeError("a journal line's record and appended call ids must be objects")
        now = budget.check_amount("journal time", entry["t"])
        kept = {} if old is None else budget.recent_applied(old.get("applied", {}), now)
        raw = {**raw, "applied": {**kept, **appended}}
    return budget.check_record(user, raw)
