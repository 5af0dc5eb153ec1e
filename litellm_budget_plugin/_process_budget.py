"""litellm's global budget: ``litellm.max_budget`` against ``litellm._current_cost``.

As litellm documents it, the budget limits this process's spend, which starts at 0 in every
process and is never stored (:data:`PROCESS_BUDGET`). A store-wide one
(``BudgetGuard(global_budget="store")``) lives in a store record, which :class:`StoreSpendShown`
copies into ``litellm._current_cost``: litellm's own wrappers compare it with the budget after
the guard's check.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

import litellm

from . import reservations
from .budget import UserRecord
from .errors import BudgetExceededError
from .subjects import GLOBAL

if TYPE_CHECKING:
    from .stores import BudgetStore

# The name litellm.max_budget goes by: in refusals, and as the store record of a store-wide
# global budget (BudgetGuard(global_budget="store")), shared by every process using the store.
GLOBAL_USER = GLOBAL  # the record of litellm.max_budget kept in the store

# How many call ids ProcessBudget remembers as counted: the guards of one call all settle it
# within moments of each other, so a few thousand recent calls is plenty.
_COUNTED_CALLS_KEPT = 4096


class ProcessBudget:
    """The spend of this process against ``litellm.max_budget``, with litellm's own (soft) rule:
    a call starts while spend and the estimates of calls in flight are under the budget. A call
    that never reports back (an abandoned stream) stops holding after its ``ttl``.

    There is one per process (:data:`PROCESS_BUDGET`), shared by every guard, as
    ``litellm._current_cost`` is: a call that several guards see holds once and counts once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: dict[str, tuple[float, float]] = {}  # call id -> (estimate, expires at)
        self._counted: dict[str, None] = {}  # recent call ids already in litellm._current_cost, oldest first

    def hold(self, call_id: str, limit: float, estimate: float, ttl: float, at_least: float | None = None) -> float:
        """Hold the call's estimate (or less, see ``reservations.hold_amount``); returns what is held."""
        now = time.time()
        with self._lock:
            self._holds = {call: held for call, held in self._holds.items() if held[1] > now and call != call_id}
            held = sum(amount for amount, _ in self._holds.values())
            spend = float(litellm._current_cost or 0.0)
            amount = reservations.hold_amount(spend, held, estimate, limit, "soft", at_least)
            if amount is None:
                hint = "litellm.max_budget limits this process's spend (litellm._current_cost): raise it to go on"
                raise BudgetExceededError(GLOBAL_USER, spend, limit, estimate, held, hint=hint)
            self._holds[call_id] = (amount, now + ttl)
            return amount

    def end(self, call_id: str, cost: float = 0.0) -> None:
        """The call ended, costing ``cost`` (0 if it failed): litellm._current_cost includes it,
        once however many guards report it."""
        with self._lock:
            self._holds.pop(call_id, None)
            if cost and call_id not in self._counted:
                self._counted[call_id] = None
                if len(self._counted) > _COUNTED_CALLS_KEPT:
                    del self._counted[next(iter(self._counted))]
                litellm._current_cost = float(litellm._current_cost or 0.0) + cost


PROCESS_BUDGET = ProcessBudget()


class StoreSpendShown:
    """Keeps ``litellm._current_cost`` equal to the spend of a store-wide global budget record.

    litellm refuses a call whose ``_current_cost`` exceeds ``max_budget`` right after the guard
    admitted it, so the value must follow the record into each new window. Records come back
    out of order (worker threads settle async calls), so a settlement's record is shown only if
    it is not older than the last one shown: a later window, or the same window with no less
    spend (spend only grows within a window). After an admission (:meth:`admitted`) the record
    is shown unless it is of an older window, so a spend reset by hand within a window reaches
    litellm's check too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown = (-math.inf, -math.inf)  # (window start, spend) of the record shown

    def admitted(self, store: BudgetStore, limit: float) -> None:
        """A call was just admitted against the record, whose spend is therefore under ``limit``
        (LiteLLM's soft rule). If the spend shown is over it, litellm would refuse the call: it is
        of an older window, or was reset by hand since, so the record is read and shown. Read
        only then: a store operation per call is not needed to show what no check stops at."""
        if float(litellm._current_cost or 0.0) > limit:
            record = store.get(GLOBAL_USER)
            if record is not None:
                self.show(record, admitted=True)

    def show(self, record: UserRecord, *, admitted: bool = False) -> None:
        window, spend = record["last_updated_at"], record["current_cost"]
        with self._lock:
            if window < self._shown[0] or (not admitted and (window, spend) < self._shown):
                return
            self._shown = (window, spend)
            litellm._current_cost = spend
