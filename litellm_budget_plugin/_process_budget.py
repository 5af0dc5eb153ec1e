"""litellm's global budget as litellm documents it: ``litellm.max_budget`` limits this process's
spend, ``litellm._current_cost``, which starts at 0 in every process and is never stored."""

from __future__ import annotations

import threading
import time

import litellm

from . import budget
from .errors import BudgetExceededError

# The name litellm.max_budget goes by: in refusals, and as the store record of a store-wide
# global budget (BudgetGuard(global_budget="store")), shared by every process using the store.
GLOBAL_USER = "litellm.max_budget"


class ProcessBudget:
    """The spend of this process against ``litellm.max_budget``, with litellm's own (soft) rule:
    a call starts while spend and the estimates of calls in flight are under the budget. A call
    that never reports back (an abandoned stream) stops holding after its ``ttl``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: dict[str, tuple[float, float]] = {}  # call id -> (estimate, expires at)

    def hold(self, call_id: str, limit: float, estimate: float, ttl: float) -> None:
        now = time.time()
        with self._lock:
            self._holds = {call: held for call, held in self._holds.items() if held[1] > now and call != call_id}
            held = sum(amount for amount, _ in self._holds.values())
            spend = float(litellm._current_cost or 0.0)
            if not budget.admits(spend, held, estimate, limit, "soft"):
                hint = "litellm.max_budget limits this process's spend (litellm._current_cost): raise it to go on"
                raise BudgetExceededError(GLOBAL_USER, spend, limit, estimate, held, hint=hint)
            self._holds[call_id] = (estimate, now + ttl)

    def end(self, call_id: str, cost: float = 0.0) -> None:
        """The call ended, costing ``cost`` (0 if it failed): litellm._current_cost includes it."""
        with self._lock:
            self._holds.pop(call_id, None)
            if cost:
                litellm._current_cost = float(litellm._current_cost or 0.0) + cost
