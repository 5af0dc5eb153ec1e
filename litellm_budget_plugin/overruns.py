"""Overruns: calls that cost more than was held for them.

Strict mode keeps a budget only while each call's hold, its worst-case estimate, is at least
what the call costs; an overrun is a call where it was not. :func:`overrun` is the one rule
for what counts: :func:`.budget.charge_many` applies it for every store (the Redis script mirrors
it) to count overruns in the user's record, and the guard to log each one and count it in
:attr:`BudgetGuard.overruns <litellm_budget_plugin.guard.BudgetGuard.overruns>`.
"""

from __future__ import annotations

from dataclasses import dataclass

# A cost counts as an overrun only beyond this share of its hold: litellm's cost and the
# estimate add the same products in different orders. redis_budget.lua has the same number.
OVERRUN_TOLERANCE = 1e-9
# How many of its latest overruns a guard keeps to show.
LATEST_KEPT = 10


def overrun(cost: float, held: float | None) -> float:
    """How much a call's actual cost exceeds what was held for it: 0.0 within float noise,
    or for a charge that had no hold (``held`` None)."""
    if held is None or cost <= held * (1 + OVERRUN_TOLERANCE):
        return 0.0
    return cost - held


@dataclass(frozen=True)
class Overrun:
    """One call that cost more than was held for it (dollars); ``user`` is None for a call
    held only against ``litellm.max_budget``."""

    call_id: str
    model: str
    user: str | None
    held: float
    actual: float

    @property
    def excess(self) -> float:
        return self.actual - self.held


@dataclass(frozen=True)
class Overruns:
    """The overruns one guard has settled in this process: ``count`` calls, ``excess_cost``
    dollars beyond their holds in all, and the ``latest`` few, oldest first."""

    count: int = 0
    excess_cost: float = 0.0
    latest: tuple[Overrun, ...] = ()

    def plus(self, call: Overrun) -> Overruns:
        return Overruns(self.count + 1, self.excess_cost + call.excess, (*self.latest, call)[-LATEST_KEPT:])
