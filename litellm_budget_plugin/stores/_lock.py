"""The store's lock: a thread mutex and ``flock`` on the ``.lock`` file that every read and write holds."""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING

import filelock

from ..errors import StoreLockTimeout

if TYPE_CHECKING:
    from .file import FileStore


class _Locked:
    """Holds the thread mutex and the file lock, and catches up with the disk on entry."""

    def __init__(self, store: FileStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        store, journal = self.store, self.store._journal
        store._mutex.acquire()
        try:
            if not journal.loaded:  # opening: read everything before taking the lock
                journal.load_unlocked()
            if not self._lock_and_catch_up(may_defer=True):  # folded by another process since
                store._file_lock.release()
                journal.load_unlocked()
                self._lock_and_catch_up(may_defer=False)
        except BaseException:
            store._mutex.release()
            raise

    def _lock_and_catch_up(self, may_defer: bool) -> bool:
        """Take the file lock and catch up (see Journal.catch_up); the lock is let go if that fails."""
        store = self.store
        try:
            store._file_lock.acquire(store.lock_timeout)
        except filelock.Timeout as exc:
            raise StoreLockTimeout(
                f"lock {str(store.lock_path)!r} not obtained within {store.lock_timeout} s; nothing was changed"
            ) from exc
        try:
            return store._journal.catch_up(may_defer)
        except BaseException:
            store._file_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.store._file_lock.release()
        finally:
            self.store._mutex.release()


class _ProcessLock:
    """The store's inter-process lock: ``flock`` on the ``.lock`` file.

    The uncontended case is one ``flock`` call on a descriptor kept open (about 1 µs; a
    ``filelock`` acquire and release costs about 50 µs here, twice per guarded call). When
    another process holds the lock, ``filelock`` does the waiting, with its timeout. Both
    lock the same file the same way, so any ``filelock.FileLock`` on the path excludes us.
    Used under the store's thread mutex, so it is never taken twice in one process.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # Poll often: a holder keeps the lock for one appended line, not the 50 ms default.
        self._waiter = filelock.FileLock(path, thread_local=False, poll_interval=0.0005)
        self._waited = False

    def acquire(self, timeout: float) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._waited = False
        except BlockingIOError:
            self._waiter.acquire(timeout=timeout)
            self._waited = True

    def release(self) -> None:
        if self._waited:
            self._waiter.release()
        else:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
