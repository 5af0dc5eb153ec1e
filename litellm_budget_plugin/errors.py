"""The error tree of litellm_budget_plugin.

::

    Exception
    ├── BudgetRefusal                  over budget: carries user, spend, budget, estimate, reserved
    │   └── BudgetExceededError (+litellm.BudgetExceededError)   what a process using litellm gets
    │       (``subject``: the budget that refused: a user id, ``team:<name>``, ``tag:<name>``)
    └── BudgetPluginError              every other error of this package
        ├── ConfigurationError (+ValueError)   bad argument, unknown store URL, missing extra
        ├── UnknownUserError (+KeyError)       no budget record for that user
        ├── UnknownModelError (+ValueError)    no price known for that model
        │   └── UnpricedModelError             priced in units a request cannot bound
        ├── GuardInstallError (+RuntimeError)  (in guard.py) the sync hook is not on litellm's call path
        └── StoreError                         the store could not be used (cause kept)
            ├── StoreLockTimeout (+TimeoutError)
            ├── StoreCorruptError              a store file we refuse to read or overwrite
            └── StoreUnavailableError          a server or Redis that cannot be reached

Backend exceptions are translated at the store boundary with ``raise ... from exc``.

This module does not import litellm: importing it takes seconds, which the CLI and the budget
server must not pay. ``BudgetExceededError`` is made on first use (module ``__getattr__``), and
refusals are raised through :func:`over_budget`: a process that has loaded litellm (an app with
``BudgetGuard`` or ``BudgetManager``) gets ``BudgetExceededError``, one that has not (the budget
server, a script using a store alone) gets its base ``BudgetRefusal``, never an import of
litellm under a store's lock. ``except BudgetRefusal`` catches both.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._litellm_errors import BudgetExceededError as BudgetExceededError  # made on first use, below

# The key litellm.max_budget is kept under in a store (BudgetGuard(global_budget="store")).
GLOBAL_KEY = "litellm.max_budget"


def entity_of(key: str) -> tuple[str, str]:
    """What a budget key names, as LiteLLM's ``entity_type``/``entity_id``: ``("team", "red")``,
    ``("tag", "search")``, ``("global", "litellm.max_budget")`` or ``("user", "alice")``."""
    kind, sep, name = key.partition(":")
    if sep and kind in ("team", "tag"):
        return kind, name
    return ("global", key) if key == GLOBAL_KEY else ("user", key)


class BudgetRefusal(Exception):
    """A call would take a budget past its limit: the refusal without litellm's error type.

    ``subject`` (also ``user``, its older name) is the budget that refused: a user id,
    ``team:<name>``, ``tag:<name>`` or ``litellm.max_budget``; ``window`` says which of its
    windows ("" for its main one, else e.g. ``"$5 daily"`` or ``"$1 on gpt-4o"``).
    """

    def __init__(
        self,
        user: str,
        spend: float,
        budget: float,
        estimate: float,
        reserved: float = 0.0,
        hint: str = "",
        window: str = "",
    ) -> None:
        super().__init__(self._refuse(user, spend, budget, estimate, reserved, hint, window))

    def _refuse(
        self, user: str, spend: float, budget: float, estimate: float, reserved: float, hint: str, window: str = ""
    ) -> str:
        """Keep the refusal's figures and return its message (one place for both classes)."""
        self.user = self.subject = user
        self.spend = spend
        self.budget = budget
        self.estimate = estimate
        self.reserved = reserved
        self.hint = hint  # why, and what to do: appended to the message after a comma
        self.window = window
        held = f", held by calls in flight ${reserved:.6f}" if reserved else ""
        kind, name = entity_of(user)
        named = "the global budget (litellm.max_budget)" if kind == "global" else f"{kind} {name!r}"
        which = f" ({window} window)" if window else ""
        self.message = (
            f"Budget exceeded for {named}{which}: spent ${spend:.6f} of ${budget:.6f}{held}; "
            f"this call is estimated at ${estimate:.6f}{', ' + hint if hint else ''}"
        )
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.user, self.spend, self.budget, self.estimate, self.reserved, self.hint, self.window)
        return (type(self), args)


def over_budget(
    user: str, spend: float, budget: float, estimate: float, reserved: float = 0.0, window: str = ""
) -> BudgetRefusal:
    """The refusal to raise: ``BudgetExceededError`` once litellm is loaded, else ``BudgetRefusal``."""
    if "litellm.exceptions" in sys.modules:
        from ._litellm_errors import BudgetExceededError

        return BudgetExceededError(user, spend, budget, estimate, reserved, window=window)
    return BudgetRefusal(user, spend, budget, estimate, reserved, window=window)


def __getattr__(name: str) -> object:
    """``BudgetExceededError`` imports litellm, so only when it is asked for."""
    if name == "BudgetExceededError":
        from ._litellm_errors import BudgetExceededError

        globals()[name] = BudgetExceededError
        return BudgetExceededError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BudgetPluginError(Exception):
    """Base of every error of this package other than the over-budget error."""


class ConfigurationError(BudgetPluginError, ValueError):
    """An argument, URL, amount or duration that cannot be used; nothing was changed."""


class UnknownUserError(BudgetPluginError, KeyError):
    """The user has no budget record (a ``KeyError`` so LiteLLM-style handlers still work)."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user

    def __str__(self) -> str:
        return f"unknown user {self.user!r}: create a budget for it first (create_budget)"


class UnknownModelError(BudgetPluginError, ValueError):
    """No price is known for the model, so a cost cannot be estimated."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"no price known for model {model!r}: register one with "
            f"litellm_budget_plugin.register_price({model!r}, input_cost_per_token=..., "
            f"output_cost_per_token=...) or litellm.register_model(...)"
        )


class UnpricedModelError(UnknownModelError):
    """The model is priced in a unit (seconds, characters, images...) that no count of a
    request's tokens bounds, so strict mode cannot promise its worst case."""

    def __init__(self, model: str, field: str) -> None:
        self.model = model
        self.field = field
        ValueError.__init__(
            self,
            f"model {model!r} is priced by {field}, which a request's tokens do not bound: register a "
            f"per-token price with litellm_budget_plugin.register_price({model!r}, input_cost_per_token=..., "
            f"output_cost_per_token=...) under another name, or guard it in soft mode",
        )


class StoreError(BudgetPluginError):
    """The budget store could not be used; the original exception is the ``__cause__``."""


class StoreLockTimeout(StoreError, TimeoutError):
    """The store's lock was not obtained in time; nothing was changed."""


class StoreCorruptError(StoreError):
    """A store file is not what we wrote; it is left untouched and not overwritten."""


class StoreUnavailableError(StoreError):
    """A budget server or Redis could not be reached."""
