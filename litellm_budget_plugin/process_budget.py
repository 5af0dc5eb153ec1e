"""litellm's global budget as litellm documents it: ``litellm.max_budget`` limits this process's
spend, ``litellm._current_cost``, which starts at 0 in every process and is never stored."""

from __future__ import annotations

import threading

import litellm

from . import budget
from .errors import BudgetExceededError

# The name litellm.max_budget goes by: in refusals, and as the store record of a store-wide
# global budget (BudgetGuard(global_budget="store")), shared by every process using the store.
GLOBAL_USER = "litellm.max_budget"


class ProcessBudget:
    """The spend of this process against ``litellm.max_budget``, with litellm's own (soft) rule:
    a call starts while spend and the estimates of calls in flight are under the budget."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = 0.0
        self._in_flight = 0

    def hold(self, limit: float, estimate: float) -> None:
        with self._lock:
            spend = float(litellm._current_cost or 0.0)
            if not budget.admits(spend, self._held, estimate, limit, "soft"):
                hint = "litellm.max_budget limits this process's spend (litellm._current_cost): raise it to go on"
                raise BudgetExceededError(GLOBAL_USER, spend, limit, estimate, self._held, hint=hint)
            self._held += estimate
            self._in_flight += 1

    def end(self, held: float, cost: float = 0.0) -> None:
        """A call held ``held`` and ended, costing ``cost`` (0 if it failed)."""
        with self._lock:
            self._in_flight -= 1
            self._held = max(0.0, self._held - held) if self._in_flight else 0.0  # no rounding left over
            if cost:
                litellm._current_cost = float(litellm._current_cost or 0.0) + cost
