"""The store interface, and the operations built from one atomic update.

A store only makes operations atomic and durable; what an operation does to a record is
decided in :mod:`litellm_budget_plugin.budget`. Stores that can run Python under their own
lock (the file store, the in-memory store) subclass :class:`RecordStore` and provide
``_read``/``_update``/``_update_many``; stores that talk to a server (HTTP, Redis) implement the
protocol directly.

Budgets beyond the user's (its team, the call's team and tags, the global budget: see
:mod:`..subjects`) are named by ``subjects=`` on ``reserve``/``admit``/``charge``/``charge_later``;
each such operation changes every record involved in one atomic step, all or none.
``settle`` and ``release`` find them from the user's hold.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, TypedDict, TypeVar, cast, runtime_checkable

from .. import budget, ledger, reservations, subjects
from ..budget import Mode, UserRecord
from ..errors import UnknownUserError
from ..ledger import LedgerEntry, Usage
from ..subjects import check_subjects_once

T = TypeVar("T")
Method = TypeVar("Method", bound=Callable[..., Any])

# The time of the store operation under way in this thread (see RecordStore.clock).
_operation_time: ContextVar[float | None] = ContextVar("operation_time", default=None)


class NewBudget(TypedDict):
    """The budget given to a user the store has never seen (None: refuse unknown users)."""

    total_budget: float | None
    duration: float | str | None


@runtime_checkable
class BudgetStore(Protocol):
    """What the guard, the manager, the server and the CLI need of a store.

    Every method is one atomic operation on the store; none is a read followed by a write.
    Reads return records with their window already rolled forward to ``now``.
    """

    def get(self, user: str) -> UserRecord | None: ...

    def all(self) -> dict[str, UserRecord]: ...

    def set_budget(
        self,
        user: str,
        total_budget: float | None,
        duration: float | str | None = None,
        created_at: float | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> UserRecord:
        """Create the budget of ``user`` (a user id, ``team:<name>`` or ``tag:<name>``), or change
        it keeping what was spent; ``fields`` (``team``, ``timezone``, ``windows``...) are set in
        the same write, as :meth:`set_fields` sets them."""
        ...

    def put(self, user: str, record: UserRecord) -> None:
        """Replace a whole record (imports, LiteLLM's /set_budget)."""
        ...

    def set_fields(self, user: str, fields: Mapping[str, object]) -> UserRecord:
        """Set some fields of a known user's record (``budget.SETTABLE_FIELDS``), in its
        current window, leaving the others as they are; all or none are set."""
        ...

    def delete(self, user: str) -> bool: ...

    def reset(self, user: str) -> UserRecord: ...

    def roll(self, user: str) -> UserRecord:
        """Persist the user's window roll now (reads roll windows by themselves)."""
        ...

    def charge(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None = None,
        default: NewBudget | None = None,
        held: float | None = None,
        *,
        subjects: Sequence[str] = (),
        usage: Usage | None = None,
    ) -> UserRecord:
        """Add ``cost`` to the user's budget and every other that applies (those its hold names,
        its team, ``subjects``); a call id already charged is not charged again; settles its
        holds. Returns the user's record.

        ``held``: what was held for the call; a cost above it counts as an overrun in the
        record (``overruns``, ``overrun_cost``), in the same write. ``usage``: the call's tokens
        and tags, for its ledger entry (:mod:`..ledger`), recorded in the same write."""
        ...

    def charge_later(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None = None,
        default: NewBudget | None = None,
        then: Callable[[UserRecord], None] | None = None,
        held: float | None = None,
        *,
        subjects: Sequence[str] = (),
        usage: Usage | None = None,
    ) -> None:
        """Charge soon, calling ``then(record)`` once charged; for callers that need no answer.

        A store with a local lock charges at its next operation in this process, in the
        same write (its reads see the charge first), or within a fraction of a second; a
        store on a server charges at once.
        """
        ...

    def reserve(
        self,
        user: str,
        call_id: str,
        amount: float,
        ttl: float,
        mode: Mode = "strict",
        default: NewBudget | None = None,
        at_least: float | None = None,
        *,
        model: str | None = None,
        subjects: Sequence[str] = (),
    ) -> UserRecord:
        """Hold ``amount`` for ``ttl`` seconds in the user's budget and every other that applies
        (``reservations.reserve_all``: its team, ``subjects``; per-model windows count ``model``),
        or raise BudgetExceededError naming the one that refused, changing nothing.

        With ``at_least``, a call whose ``amount`` does not fit holds what is left of the
        budget if that is ``at_least`` or more (``reservations.hold_amount``), decided in the same
        atomic step; the user's record returned shows the hold (``reservations.held_for``).
        """
        ...

    def admit(
        self,
        user: str,
        call_id: str,
        amount: float,
        ttl: float,
        default: NewBudget | None = None,
        at_least: float | None = None,
        *,
        model: str | None = None,
        subjects: Sequence[str] = (),
    ) -> float:
        """``reserve`` in strict mode for a call that ``charge_later`` or ``release`` will end;
        returns what it holds for the call (``amount``, or less with ``at_least``).

        A store with a local lock may hold more than the call needs for this process (a
        lease) and admit the process's next calls from it without writing; other processes
        see the whole lease held. A store on a server reserves at once.
        """
        ...

    def settle(
        self, call_id: str, actual_cost: float, model: str, user: str | None = None, *, usage: Usage | None = None
    ) -> bool:
        """Charge a reserved call its actual cost, in every budget holding it; False if the call
        was not known or already settled.

        A cost above the call's hold counts as an overrun, as with ``charge(held=...)``."""
        ...

    def ledger(self, since: float | None = None, until: float | None = None) -> Iterator[LedgerEntry]:
        """The charges recorded from ``since`` (included) to ``until`` (excluded), Unix times
        (None: unbounded), all the store keeps; this process's pending charges written first."""
        ...

    def release(self, call_id: str, user: str | None = None) -> bool:
        """Drop a call's holds, in every budget holding it, without charging; False if there was none."""
        ...

    def close(self) -> None: ...


def _at_one_time(method: Method) -> Method:
    """Make one store operation read the clock once: every ``clock()`` it makes, down to
    the journal entry, returns the time read when it started (an outer operation's, if nested)."""

    @functools.wraps(method)
    def at_one_time(self: RecordStore, *args: Any, **kwargs: Any) -> Any:
        if _operation_time.get() is not None:
            return method(self, *args, **kwargs)
        token = _operation_time.set(self.clock())
        try:
            return method(self, *args, **kwargs)
        finally:
            _operation_time.reset(token)

    return cast(Method, at_one_time)


class RecordStore(abc.ABC):
    """A store that applies :mod:`budget` functions under its own lock.

    Subclasses provide ``_read`` (a consistent view of all records) and ``_update``
    (an atomic, durable read-modify-write of one user's record).
    """

    def clock(self) -> float:
        """The time now, read through ``time.time`` at call time, so that freezegun,
        ``monkeypatch`` or ``mock.patch("time.time")`` move it; a test may also set
        ``store.clock`` to a function of its own.

        One operation reads it once: its window, its holds and its journal entry share
        that time (see :func:`_at_one_time`).
        """
        pinned = _operation_time.get()
        return time.time() if pinned is None else pinned

    @abc.abstractmethod
    def _read(self, fn: Callable[[dict[str, UserRecord]], T]) -> T:
        """Call ``fn`` on the current records, under the store's lock."""

    @abc.abstractmethod
    def _update(self, user: str, fn: Callable[[UserRecord | None], tuple[UserRecord | None, T]]) -> T:
        """Atomically replace the user's record by ``fn``'s first result (None deletes)."""

    @abc.abstractmethod
    def _update_many(
        self,
        fn: Callable[[Mapping[str, UserRecord]], tuple[Mapping[str, UserRecord | None], T]],
        written: Callable[[T], None] | None = None,
    ) -> T:
        """Atomically replace the records ``fn`` returns (None deletes); ``fn`` is given every
        record (not to be changed) and returns the changed ones and a result; ``written(result)``
        runs once they are written, still under the lock."""

    @abc.abstractmethod
    def _record_charges(self, entries: list[LedgerEntry]) -> None:
        """Add the entries of charges just written to the ledger, under the store's lock."""

    @abc.abstractmethod
    def _user_of_call(self, call_id: str) -> str | None:
        """The user holding a reservation for ``call_id``, if any (the record whose hold names
        the others, when several hold it)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files or connections."""

    # -- reads ---------------------------------------------------------------------------

    @_at_one_time
    def get(self, user: str) -> UserRecord | None:
        budget.check_user(user)
        now = self.clock()
        return self._read(lambda records: None if (r := records.get(user)) is None else budget.current_window(r, now))

    @_at_one_time
    def all(self) -> dict[str, UserRecord]:
        now = self.clock()
        return self._read(lambda records: {u: budget.current_window(r, now) for u, r in records.items()})

    # -- writes --------------------------------------------------------------------------

    @_at_one_time
    def set_budget(
        self,
        user: str,
        total_budget: float | None,
        duration: float | str | None = None,
        created_at: float | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> UserRecord:
        subjects.check_subject(user)
        now = self.clock()
        budget.new_record(total_budget, duration, now, created_at)  # validate before locking
        checked = None if fields is None else budget.check_fields(user, fields)

        def change(record: UserRecord | None) -> tuple[UserRecord, UserRecord]:
            updated = budget.with_budget(record, total_budget, duration, now, created_at)
            # with no fields too: a new duration must still suit the record's timezone and windows
            updated = budget.with_fields(updated, checked or {}, now, user)
            return updated, updated

        return self._update(user, change)

    @_at_one_time
    def put(self, user: str, record: UserRecord) -> None:
        subjects.check_subject(user)
        checked = budget.check_record(user, record)
        self._update(user, lambda _old: (checked, None))

    @_at_one_time
    def set_fields(self, user: str, fields: Mapping[str, object]) -> UserRecord:
        budget.check_user(user)
        checked = budget.check_fields(user, fields)
        now = self.clock()

        def change(record: UserRecord | None) -> tuple[UserRecord, UserRecord]:
            updated = budget.with_fields(_existing(user, record), checked, now, user)
            return updated, updated

        return self._update(user, change)

    @_at_one_time
    def delete(self, user: str) -> bool:
        budget.check_user(user)
        return self._update(user, lambda old: (None, old is not None))

    @_at_one_time
    def reset(self, user: str) -> UserRecord:
        budget.check_user(user)
        now = self.clock()

        def change(record: UserRecord | None) -> tuple[UserRecord, UserRecord]:
            updated = budget.reset_spend(_existing(user, record), now)
            return updated, updated

        return self._update(user, change)

    @_at_one_time
    def roll(self, user: str) -> UserRecord:
        budget.check_user(user)
        now = self.clock()

        def change(record: UserRecord | None) -> tuple[UserRecord, UserRecord]:
            updated = budget.current_window(_existing(user, record), now)
            return updated, updated

        return self._update(user, change)

    @_at_one_time
    def charge(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None = None,
        default: NewBudget | None = None,
        held: float | None = None,
        *,
        subjects: Sequence[str] = (),
        usage: Usage | None = None,
    ) -> UserRecord:
        change = self._charge_change(user, cost, model, call_id, default, held, subjects)
        usage = ledger.check_usage(usage)
        now = self.clock()

        def charged(
            records: Mapping[str, UserRecord],
        ) -> tuple[dict[str, UserRecord], tuple[UserRecord, list[LedgerEntry]]]:
            changed, record = change(records)
            return changed, (record, ledger.entries_of(now, changed, user, model, cost, call_id, usage))

        record, _ = self._update_many(charged, lambda result: self._record_charges(result[1]))
        return record

    def _charge_change(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None,
        default: NewBudget | None,
        held: float | None = None,
        subjects: Sequence[str] = (),
        held_by: tuple[str, ...] | None = None,
    ) -> Callable[[Mapping[str, UserRecord]], tuple[dict[str, UserRecord], UserRecord]]:
        """The change ``charge`` makes, checked now and applied under the lock (maybe later);
        ``held_by``: the budgets a call admitted from a lease was held in (see ``charge_all``)."""
        budget.check_user(user)
        budget.check_amount("cost", cost)
        budget.check_model_name(model)
        if call_id is not None:
            budget.check_call_id(call_id)
        if held is not None:
            budget.check_amount("held amount", held)
        others = check_subjects_once(subjects)
        now = self.clock()

        def change(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord], UserRecord]:
            record = _or_default(user, records.get(user), default, now)
            changed = reservations.charge_all(records, user, record, cost, model, call_id, now, held, others, held_by)
            return changed, changed.get(user, record)

        return change

    @_at_one_time
    def reserve(
        self,
        user: str,
        call_id: str,
        amount: float,
        ttl: float,
        mode: Mode = "strict",
        default: NewBudget | None = None,
        at_least: float | None = None,
        *,
        model: str | None = None,
        subjects: Sequence[str] = (),
    ) -> UserRecord:
        return self._update_many(
            self._reserve_change(user, call_id, amount, ttl, mode, default, at_least, model, subjects)
        )[0]

    def _reserve_change(
        self,
        user: str,
        call_id: str,
        amount: float,
        ttl: float,
        mode: Mode,
        default: NewBudget | None,
        at_least: float | None,
        model: str | None,
        subjects: Sequence[str],
    ) -> Callable[[Mapping[str, UserRecord]], tuple[dict[str, UserRecord], tuple[UserRecord, float]]]:
        """The change ``reserve`` makes, checked now: its result is the user's record and the amount held."""
        budget.check_reservation(user, call_id, amount, ttl, mode, at_least)
        if model is not None:
            budget.check_model_name(model)
        others = check_subjects_once(subjects)
        now = self.clock()

        def change(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord], tuple[UserRecord, float]]:
            record = _or_default(user, records.get(user), default, now)
            changed, held = reservations.reserve_all(
                records, user, record, call_id, amount, ttl, mode, now, at_least, model, others
            )
            return changed, (changed.get(user, record), held)

        return change

    @_at_one_time
    def settle(
        self, call_id: str, actual_cost: float, model: str, user: str | None = None, *, usage: Usage | None = None
    ) -> bool:
        budget.check_call_id(call_id)
        budget.check_amount("actual cost", actual_cost)
        budget.check_model_name(model)
        if user is not None:
            budget.check_user(user)
        usage = ledger.check_usage(usage)
        owner = user if user is not None else self._user_of_call(call_id)
        if owner is None:
            return False
        now = self.clock()

        def change(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord], list[LedgerEntry]]:
            record = records.get(owner)
            if record is None:
                return {}, []
            hold = record.get("reservations", {}).get(call_id)
            held = None if hold is None else hold["amount"]
            changed = reservations.charge_all(records, owner, record, actual_cost, model, call_id, now, held)
            return changed, ledger.entries_of(now, changed, owner, model, actual_cost, call_id, usage)

        return bool(self._update_many(change, self._record_charges))

    @_at_one_time
    def release(self, call_id: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        if user is not None:
            budget.check_user(user)
        owner = user if user is not None else self._user_of_call(call_id)
        if owner is None:
            return False
        now = self.clock()

        def change(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord], bool]:
            changed = reservations.release_all(records, owner, call_id, now)
            return changed, owner in changed

        return self._update_many(change)


def _existing(user: str, record: UserRecord | None) -> UserRecord:
    if record is None:
        raise UnknownUserError(user)
    return record


def _or_default(user: str, record: UserRecord | None, default: NewBudget | None, now: float) -> UserRecord:
    if record is not None:
        return record
    if default is None:
        raise UnknownUserError(user)
    subjects.check_subject(user)  # a record is made under this key
    checked = budget.check_default(default)
    return budget.new_record(checked["total_budget"], checked["duration"], now)
