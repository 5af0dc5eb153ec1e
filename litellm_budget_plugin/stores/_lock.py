"""The store's lock: a thread mutex and ``flock`` on the ``.lock`` file that every read and write holds."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StoreError, StoreLockTimeout
from ._journal import open_in_folder

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
        if not store._file_lock.acquire(store.lock_timeout):
            raise StoreLockTimeout(
                f"lock {str(store.lock_path)!r} not obtained within {store.lock_timeout} s; nothing was changed"
            )
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

    The uncontended case is one ``flock`` call on a descriptor kept open (about 1 µs). When
    another process holds the lock, it is polled, often at first (a holder keeps it for one
    appended line), until the timeout. The file is opened once, never following a link (see
    :func:`._journal.open_in_folder`), and only this descriptor is ever locked: no other
    open of the path can be redirected. Any ``flock`` on the path (``filelock.FileLock``
    included) excludes us. Used under the store's thread mutex, so it is never taken twice
    in one process.
    """

    _FIRST_POLL, _LAST_POLL = 0.0005, 0.01

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = open_in_folder(Path(path), os.O_RDWR | os.O_CREAT)
        except OSError as exc:  # PermissionError included: on_store_error="open" must see a StoreError
            raise StoreError(f"cannot open lock file {path!r}: {exc}") from exc

    def acquire(self, timeout: float) -> bool:
        """Take the lock; False if it was not free within ``timeout`` seconds."""
        deadline, pause = time.monotonic() + timeout, self._FIRST_POLL
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(pause, left))
                pause = min(pause * 2, self._LAST_POLL)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
