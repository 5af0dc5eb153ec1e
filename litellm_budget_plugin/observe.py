"""What happens to budgets, told to whoever watches: metrics, alerts.

The guard and the budget server tell their observers of each admission, refusal, charge,
overrun and store failure. Observers are called on the call's path: a method must be quick,
must not block (a webhook is sent by a background thread) and should not raise; one that
raises is logged and the call goes on, so watching never changes what a call does.
``project`` is the server's project name, None for a guard (one store).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from .errors import BudgetRefusal, ConfigurationError
from .overruns import Overrun

logger = logging.getLogger(__name__)

__all__ = ["BudgetObserver", "Observers"]


class BudgetObserver:
    """Override what you watch; every method does nothing by default."""

    def admitted(self, project: str | None, keys: Sequence[str], model: str) -> None:
        """A call was held in the budgets ``keys`` (its user, team, tags...)."""

    def refused(self, project: str | None, error: BudgetRefusal) -> None:
        """A call was refused: ``error.subject`` (and ``error.window``) name the budget. A guard's
        refusals are ``BudgetExceededError``; the budget server's, which does not load litellm,
        its base ``BudgetRefusal``."""

    def charged(self, project: str | None, keys: Sequence[str], cost: float, model: str) -> None:
        """A call's cost was charged (or handed to the store to charge) to the budgets ``keys``."""

    def overran(self, project: str | None, call: Overrun) -> None:
        """A call cost more than was held for it."""

    def store_failed(self, project: str | None, operation: str, error: BaseException) -> None:
        """A store operation failed."""

    def store_timed(self, project: str | None, operation: str, seconds: float) -> None:
        """A store operation took ``seconds`` (admissions and server operations)."""

    def close(self) -> None:
        """Finish what is queued (the budget server calls it at shutdown, before it closes its stores)."""


class Observers(BudgetObserver):
    """Several observers as one; an observer that raises is logged, never the caller's problem."""

    def __init__(self, observers: Iterable[BudgetObserver] = ()) -> None:
        self.observers: tuple[BudgetObserver, ...] = tuple(observers)
        for observer in self.observers:
            if not isinstance(observer, BudgetObserver):
                raise ConfigurationError(f"observers must be BudgetObserver instances, got {type(observer).__name__}")

    def __bool__(self) -> bool:
        return bool(self.observers)

    def admitted(self, project: str | None, keys: Sequence[str], model: str) -> None:
        for observer in self.observers:
            _safely(observer.admitted, project, keys, model)

    def refused(self, project: str | None, error: BudgetRefusal) -> None:
        for observer in self.observers:
            _safely(observer.refused, project, error)

    def charged(self, project: str | None, keys: Sequence[str], cost: float, model: str) -> None:
        for observer in self.observers:
            _safely(observer.charged, project, keys, cost, model)

    def overran(self, project: str | None, call: Overrun) -> None:
        for observer in self.observers:
            _safely(observer.overran, project, call)

    def store_failed(self, project: str | None, operation: str, error: BaseException) -> None:
        for observer in self.observers:
            _safely(observer.store_failed, project, operation, error)

    def store_timed(self, project: str | None, operation: str, seconds: float) -> None:
        for observer in self.observers:
            _safely(observer.store_timed, project, operation, seconds)

    def close(self) -> None:
        for observer in self.observers:
            _safely(observer.close)


def _safely(method: Callable[..., object], *args: object) -> None:
    try:
        method(*args)
    except Exception:
        logger.exception("budget observer %r failed; the call goes on", method)
