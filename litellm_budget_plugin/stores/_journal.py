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

Opening reads the snapshot and the journal without the lock (:meth:`Journal.load_unlocked`),
and so does a process that finds the journal folded by another one: the lock is then held only
to read the lines appended meanwhile, so processes opening a store at once never wait on each
other's reading. The journal is folded once it outgrows :data:`MIN_JOURNAL_BYTES` and the
snapshot, so reading it never costs much more than reading the snapshot; and on the first
write when there is no snapshot yet, so that ``user_cost.json`` exists from then on.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import operator
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .. import budget, subjects
from ..budget import UserRecord
from ..errors import ConfigurationError, StoreCorruptError, StoreError

logger = logging.getLogger(__name__)

# Built once: json.dumps with any option set builds a new encoder on every call (for the
# snapshot, once per user: half the time of a fold).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_SNAPSHOT_ENCODER = json.JSONEncoder(allow_nan=False)
_AS_READ_ENCODER = json.JSONEncoder()  # a bad record is written back as it was read, NaN included
# The journal is folded into the snapshot once it is larger than both of these.
MIN_JOURNAL_BYTES = 256 * 1024
# A journal folded while it is read without the lock is read again, up to this many times in
# all; after that the lock holder reads it.
_UNLOCKED_LOAD_ATTEMPTS = 3


class Journal:
    """This process's copy of a store's records, and the snapshot and journal they come from.

    Every method runs under the store's thread mutex, and all but :meth:`load_unlocked`
    under its file lock too.
    """

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.journal_path = path.with_name(path.name + ".journal")
        self.fsync = fsync
        self.records: dict[str, UserRecord] = {}
        # Records that fail their check when read (written by hand or by an older version):
        # user -> (the record as read, the problem). Kept as they are in every fold, refused
        # for that user only (see :meth:`refuse_bad`), left out of listings.
        self.bad: dict[str, tuple[object, str]] = {}
        # Call id of a reservation -> the user holding it: of the records holding one call
        # (its user, team, tags...), the user's, which names the others (see :meth:`_apply`).
        self.calls: dict[str, str] = {}
        # Lines encoded ahead of a write (see :meth:`prepare`): user -> (old, new, line, replayed).
        self._prepared: dict[str, tuple[UserRecord | None, UserRecord | None, str, UserRecord | None]] = {}
        self._fd: int | None = None
        self._snapshot_id: tuple[int, int, int] | None = None
        self._offset = 0
        # The last line read without the lock and where it starts: checked, under the lock,
        # to be still there (a failed or torn write is cut off under the lock, and a reader
        # without it may have seen its lines).
        self._unverified: tuple[int, bytes] | None = None

    @property
    def loaded(self) -> bool:
        return self._fd is not None

    def load_unlocked(self) -> None:
        """Read the snapshot and the journal without the lock; :meth:`catch_up` then reads,
        under the lock, only the lines appended meanwhile.

        The journal's file is opened before the snapshot is read: a fold writes the snapshot
        before it replaces the journal, so the snapshot read is the journal's own, or a newer
        one that already holds the journal's lines (replayed onto it, they change nothing,
        and the journal is then found replaced). A journal that does not exist yet is created
        once the snapshot has been read. Either way the copy is kept only if, once read, the
        journal is still linked and the snapshot still the one read; else it is read again.
        Whatever goes wrong leaves nothing loaded, and the lock holder reads it all (and
        reports the problem).
        """
        for _ in range(_UNLOCKED_LOAD_ATTEMPTS):
            try:
                self._reload(locked=False)
                assert self._fd is not None
                if os.fstat(self._fd).st_nlink and self._stat_snapshot() == self._snapshot_id:
                    return
            except Exception:  # read again under the lock, which reports it
                break
        self.forget()

    def catch_up(self, may_defer: bool = False) -> bool:
        """Bring the records up to what is on disk, under the lock.

        One ``fstat`` of the open journal tells it all: more bytes are lines other processes
        appended; no link left means a compaction replaced it (or someone deleted it), so the
        records are read again from the new snapshot and journal; with ``may_defer``, not
        here: this returns False and the caller reads them without the lock
        (:meth:`load_unlocked`) and comes back.
        """
        try:
            if self._fd is not None:
                journal = os.fstat(self._fd)
                if (
                    journal.st_nlink
                    and journal.st_size >= self._offset
                    and (self._unverified is None or self._still_there())
                ):
                    if journal.st_size > self._offset:
                        self._replay(journal.st_size)
                    return True
            if may_defer:
                self.forget()
                return False
            self._reload()
            return True
        except BaseException:
            self.forget()
            raise

    def _still_there(self) -> bool:
        """Whether the last line read without the lock is still in the journal (checked once)."""
        assert self._fd is not None and self._unverified is not None
        start, line = self._unverified
        self._unverified = None
        return os.pread(self._fd, len(line), start) == line

    def refuse_bad(self, user: str) -> None:
        """Raise StoreCorruptError if ``user``'s record was read and failed its check."""
        if user in self.bad:
            raise StoreCorruptError(
                f"the record of user {user[:80]!r} in {str(self.path)!r} cannot be used: {self.bad[user][1]}; "
                "it was left untouched (fix or remove it in the file)"
            )

    def forget(self) -> None:
        """Drop what is loaded (it may be half read): the next operation starts over."""
        self.close()
        self.records, self.calls, self.bad = {}, {}, {}
        self._prepared.clear()
        self._unverified = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

    def prepare(self, user: str, new: UserRecord | None, now: float) -> None:
        """Encode the line that would write ``new`` as ``user``'s record, raising what JSON
        raises for a record it cannot encode; :meth:`write` then uses that line. So a record
        that cannot be written is found with the change that made it, at no extra cost."""
        old = self.records.get(user)
        entry, replayed = _journal_entry(user, old, new, now)
        self._prepared[user] = (old, new, _ENCODER.encode(entry), replayed)

    def write(self, working: dict[str, UserRecord | None], now: float) -> bool:
        """Append the records of ``working`` that changed, in one write, then make them the
        loaded ones. Whether anything was written; on StoreError nothing was."""
        lines, replayed = [], {}
        try:
            for user, new in working.items():
                old = self.records.get(user)
                if new is not old:
                    prepared = self._prepared.get(user)
                    if prepared is not None and prepared[0] is old and prepared[1] is new:
                        lines.append(prepared[2])
                        replayed[user] = prepared[3]
                    else:
                        entry, replayed[user] = _journal_entry(user, old, new, now)
                        lines.append(_ENCODER.encode(entry))
        finally:
            self._prepared.clear()
        if not lines:
            return False
        self._append(("\n".join(lines) + "\n").encode())
        for user, record in replayed.items():
            self._apply(user, record)  # what other processes will read, to the call id order
        return True

    def fold_due(self) -> bool:
        """Whether to fold now: the journal outgrew the snapshot, or there is no snapshot yet
        (a new store: the JSON file exists from its first write on)."""
        return self._snapshot_id is None or self._offset > max(MIN_JOURNAL_BYTES, self._snapshot_id[2])

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
        encode = _SNAPSHOT_ENCODER.encode
        lines = ",\n".join(
            [
                *(f" {encode(u)}: {encode(r)}" for u, r in self.records.items()),
                *(f" {encode(u)}: {_AS_READ_ENCODER.encode(raw)}" for u, (raw, _) in self.bad.items()),
            ]
        )
        write_atomically(self.path, f"{{\n{lines}\n}}\n".encode(), self.fsync)
        self._snapshot_id = self._stat_snapshot()
        write_atomically(self.journal_path, b"", self.fsync)
        self._open()
        self._offset = 0

    def _stat_snapshot(self) -> tuple[int, int, int] | None:
        try:
            return _file_id(os.lstat(self.path))
        except FileNotFoundError:
            return None

    def _reload(self, locked: bool = True) -> None:
        """Read the records again: the journal's file first, then the snapshot (see
        :meth:`load_unlocked` for why in this order), then the journal's lines."""
        self.records, self.calls, self.bad = {}, {}, {}
        self._unverified = None
        self._open(create=False)
        self._snapshot_id, snapshot = self._load_snapshot()
        for user, record in snapshot.items():
            self._apply(user, record)
        if self._fd is None:
            self._open(create=True)  # only now: a snapshot that cannot be read was refused, nothing created
        self._offset = 0
        assert self._fd is not None
        self._replay(os.fstat(self._fd).st_size, locked)

    def _open(self, create: bool = True) -> None:
        """(Re)open the journal file at its path; one that does not exist is left closed unless ``create``."""
        self.close()
        try:
            self._fd = open_in_folder(self.journal_path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0))
        except StoreError:
            raise
        except OSError as exc:
            if create or not isinstance(exc, FileNotFoundError):
                raise StoreError(f"cannot open journal {str(self.journal_path)!r}: {exc}") from exc

    def _load_snapshot(self) -> tuple[tuple[int, int, int] | None, dict[str, UserRecord]]:
        """The snapshot's identity (inode, mtime, size) and records, read from one open file."""
        where = f"store file {str(self.path)!r}"
        try:
            with open(open_in_folder(self.path, os.O_RDONLY), "rb") as file:
                snapshot_id, data = _file_id(os.fstat(file.fileno())), file.read()
        except FileNotFoundError:
            return None, {}
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot read {where}: {exc}") from exc
        try:
            raw = json.loads(data or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise StoreCorruptError(f"{where} is not valid JSON ({exc}); it was left untouched") from exc
        if not isinstance(raw, dict):
            raise StoreCorruptError(
                f"{where} must hold an object of users, not {type(raw).__name__}; it was left untouched"
            )
        records = {}
        for user, record in raw.items():
            try:
                records[user] = budget.check_record(budget.check_user(user), record)
            except ConfigurationError as exc:
                self._mark_bad(user, record, str(exc))
        return snapshot_id, records

    def _mark_bad(self, user: str, raw: object, problem: str) -> None:
        """Keep a record that fails its check aside, for its user only (see :attr:`bad`)."""
        self._apply(user, None)
        self.bad[user] = (raw, problem)
        logger.warning("store file %s: the record of user %r is left out: %s", self.path, user[:80], problem)

    def _replay(self, size: int, locked: bool = True) -> None:
        """Apply the journal's complete lines up to ``size``; under the lock, cut off a torn
        last line (its writer died: the lock was let go with it)."""
        assert self._fd is not None
        data = os.pread(self._fd, size - self._offset, self._offset)
        complete = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:complete].splitlines()):
            try:
                entry = json.loads(line)
                user = entry["u"]
                if not isinstance(user, str):
                    raise TypeError("a journal line's user must be a string")
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise StoreCorruptError(
                    f"journal {str(self.journal_path)!r} has a bad entry at byte "
                    f"{self._offset} (+{number} lines): {exc}; it was left untouched"
                ) from exc
            try:
                record = _replayed_record(budget.check_user(user), entry, self.records.get(user))
            except (ValueError, KeyError, TypeError) as exc:  # ConfigurationError is a ValueError
                self._mark_bad(user, _as_read(entry), f"journal line {self._offset} (+{number} lines): {exc}")
                continue
            self._apply(user, record)
        if not locked and complete:
            start = data.rfind(b"\n", 0, complete - 1) + 1
            self._unverified = (self._offset + start, data[start:complete])
        self._offset += complete
        if locked and complete < len(data):
            os.ftruncate(self._fd, self._offset)

    def _apply(self, user: str, record: UserRecord | None) -> None:
        """Make ``record`` the user's, keeping :attr:`calls` current: a call held by several
        records maps to the user's (its hold names the others in ``also``; a team, tag or the
        global budget holds a call only for a user), whatever order they are applied in."""
        self.bad.pop(user, None)  # a record written over a bad one replaces it
        old = self.records.get(user)
        if old is not None:
            for call_id in old.get("reservations", {}):
                if self.calls.get(call_id) == user:
                    del self.calls[call_id]
        if record is None:
            self.records.pop(user, None)
            return
        self.records[user] = record
        holds_for_itself = subjects.kind_of(user) == "user" and user != subjects.GLOBAL
        for call_id, hold in record.get("reservations", {}).items():
            if holds_for_itself or "also" in hold or call_id not in self.calls:
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


def write_atomically(target: Path, data: bytes, fsync: bool = False) -> None:
    """Write a new file beside ``target`` and rename it over ``target``.

    The temp file's name is random and it is created exclusively (``mkstemp``), so no
    link placed in the folder beforehand can redirect the write; the rename replaces a
    link at ``target`` itself, never what it points to.
    """
    temp: str | None = None
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with open(fd, "wb") as out:
            os.fchmod(fd, 0o644)
            out.write(data)
            out.flush()
            if fsync:  # a killed process cannot lose what is in the page cache
                os.fsync(out.fileno())
        os.replace(temp, target)
    except OSError as exc:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
        raise StoreError(f"cannot write {str(target)!r}: {exc}") from exc


def open_in_folder(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open a store file without following a link: it must be a regular file of its own
    (not a symbolic link, not hard-linked elsewhere), so no write reaches outside the folder.

    :raises StoreCorruptError: the path is a link or not a regular file (left untouched).
    :raises OSError: any other failure (the caller names it).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)  # a FIFO never blocks
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise StoreCorruptError(
                f"store file {str(path)!r} is a symbolic link; the store never follows links out of its folder"
            ) from exc
        raise
    info = os.fstat(fd)
    problem = (
        "is not a regular file"
        if not stat.S_ISREG(info.st_mode)
        else f"has {info.st_nlink} hard links; a store file must have one"
        if info.st_nlink > 1
        else None
    )
    if problem is not None:
        os.close(fd)
        raise StoreCorruptError(f"store file {str(path)!r} {problem}; it was left untouched")
    return fd


def _file_id(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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
    if applied is not kept:
        # The kept ids first, in order (prunes go by position), then the appended ones.
        if len(applied) < len(kept) or not all(map(operator.eq, applied.items(), kept.items())):
            return {"u": user, "r": new}, new  # not a prune plus appends (an import, a put)
        appended = dict(itertools.islice(applied.items(), len(kept), None))
    # Replaying the line gives the kept ids then the appended ones: ``new`` itself.
    return {"u": user, "r": {k: v for k, v in new.items() if k != "applied"}, "t": now, "a": appended}, new


def _as_read(entry: dict[str, Any]) -> object:
    """The record of a journal line as it stands, ids it appends included (kept as read: an
    "a" that is not an object stays in it, so that the record is refused again once folded)."""
    raw = entry.get("r")
    return {**raw, "applied": entry["a"]} if isinstance(raw, dict) and "a" in entry else raw


def _replayed_record(user: str, entry: dict[str, Any], old: UserRecord | None) -> UserRecord | None:
    """The record a journal line (see :func:`_journal_entry`) gives, checked.

    Of the remembered call ids, only those the line appends are checked: the others are the
    previous record's, checked when it was read (checking up to 256 ids a line was most of
    the cost of replaying a journal).
    """
    raw = entry["r"]
    if raw is None or "t" not in entry:
        return None if raw is None else budget.check_record(user, raw)
    appended = entry["a"]
    if not isinstance(raw, dict) or not isinstance(appended, dict):
        raise TypeError("a journal line's record and appended call ids must be objects")
    now = budget.check_amount("journal time", entry["t"])
    record = budget.check_record(user, {**raw, "applied": appended})
    kept = {} if old is None else budget.recent_applied(old.get("applied", {}), now)
    if kept:
        record["applied"] = {**kept, **record.get("applied", {})}
    return record
