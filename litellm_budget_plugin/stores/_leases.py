"""Leases: a process's hold for one user's calls, from which most strict-mode calls are admitted
without a write (see :meth:`~litellm_budget_plugin.stores.file.FileStore.admit`)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection

# A lease gives back its spare once its user has not been called for this long...
LEASE_IDLE_SECONDS = 0.05
# ...and gets spare only for a user called for again within this long.
LEASE_HOT_SECONDS = 1.0
# A lease's spare is held this much longer than a call's lease, so that calls admitted from it
# meanwhile are held for all of theirs; rewritten once half of this is used.
LEASE_HORIZON_SECONDS = 5.0


class _Lease:
    """This process's hold for one user's calls, under one reservation id in the file.

    The file holds ``in_flight + spare``: the calls admitted and not yet ended, and spare
    from which the next calls are admitted without a write. Whatever changes, the file
    never holds less than that: spare is given up here before the file is told, and taken
    here only after the file holds it, and only for a call the file holds long enough (so a
    process that cannot write stops admitting from spare). Each call keeps its own expiry,
    as a reservation does; spare is held :data:`LEASE_HORIZON_SECONDS` beyond a lease.
    """

    def __init__(self, ttl: float) -> None:
        self.hold_id = f"lease-{uuid.uuid4().hex}"
        self.ttl = ttl
        self.calls: dict[str, tuple[float, float]] = {}  # call id -> (amount, expires_at)
        self.in_flight = 0.0
        self.spare = 0.0
        self.last_used = -math.inf  # time.monotonic() of the last call admitted
        self.written_until = -math.inf  # the expiry of the hold last written to the file
        self.writing_until: float | None = None  # ... and of one being written now

    def take(self, call_id: str, amount: float, expires_at: float) -> bool:
        if amount > self.spare or expires_at > self.written_until:
            return False
        self.spare -= amount
        self.add(call_id, amount, expires_at)
        return True

    def add(self, call_id: str, amount: float, expires_at: float) -> None:
        self.calls[call_id] = (amount, expires_at)
        self.in_flight += amount
        self.last_used = time.monotonic()

    def drop(self, call_id: str) -> None:
        amount, _ = self.calls.pop(call_id, (0.0, 0.0))
        self.in_flight = max(0.0, self.in_flight - amount) if self.calls else 0.0

    def in_flight_without(self, leaving: Collection[str]) -> float:
        """What the calls in flight hold, but those ``leaving`` (charged in the write under way)."""
        if not leaving:
            return self.in_flight
        gone = [amount for call_id, (amount, _) in self.calls.items() if call_id in leaving]
        if len(gone) == len(self.calls):
            return 0.0
        return max(0.0, self.in_flight - sum(gone))

    def expires_at(self, now: float, spare: bool, leaving: Collection[str] = ()) -> float:
        """When the file's hold may lapse: with its last call (but those ``leaving``), or, with
        spare, long enough for the calls admitted from it in the next :data:`LEASE_HORIZON_SECONDS`."""
        last_call = max((at for call_id, (_, at) in self.calls.items() if call_id not in leaving), default=now)
        return max(last_call, now + self.ttl + LEASE_HORIZON_SECONDS) if spare else last_call

    def expire(self, now: float) -> list[str]:
        """Drop the calls whose hold has lapsed (a stream abandoned, say), as a reservation would."""
        lapsed = [call_id for call_id, (_, expires_at) in self.calls.items() if expires_at <= now]
        for call_id in lapsed:
            self.drop(call_id)
        return lapsed
