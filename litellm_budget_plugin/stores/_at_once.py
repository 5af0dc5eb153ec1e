"""Stores on a server (HTTP, Redis) admit and charge in one write each, at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import reservations
from ..budget import UserRecord
from ..ledger import Usage
from .base import BudgetStore, NewBudget


class WritesAtOnce:
    """``charge_later`` and ``admit`` for stores on a server: a local shortcut saves no round
    trip there, so each is one write, now."""

    def admit(
        self: BudgetStore,
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
        record = self.reserve(user, call_id, amount, ttl, "strict", default, at_least, model=model, subjects=subjects)
        return reservations.held_for(record, call_id, amount)

    def charge_later(
        self: BudgetStore,
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
        record = self.charge(
            user, cost, model, call_id=call_id, default=default, held=held, subjects=subjects, usage=usage
        )
        if then is not None:
            then(record)
