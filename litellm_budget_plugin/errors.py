"""The error tree of litellm_budget_plugin.

::

    Exception
    ├── litellm.BudgetExceededError
    │   └── BudgetExceededError        over budget: carries user, spend, budget, estimate
    └── BudgetPluginError              every other error of this package
        ├── ConfigurationError (+ValueError)   bad argument, unknown store URL, missing extra
        ├── UnknownUserError (+KeyError)       no budget record for that user
        ├── UnknownModelError (+ValueError)    no price known for that model
        └── StoreError                         the store could not be used (cause kept)
            ├── StoreLockTimeout (+TimeoutError)
            ├── StoreCorruptError              a store file we refuse to read or overwrite
            └── StoreUnavailableError          a server or Redis that cannot be reached

Backend exceptions are translated at the store boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from litellm.exceptions import BudgetExceededError as LiteLLMBudgetExceededError


class BudgetExceededError(LiteLLMBudgetExceededError):
    """A call would take ``user`` past ``budget``; litellm's own handlers still catch it."""

    def __init__(
        self, user: str, spend: float, budget: float, estimate: float, reserved: float = 0.0, hint: str = ""
    ) -> None:
        self.user = user
        self.spend = spend
        self.budget = budget
        self.estimate = estimate
        self.reserved = reserved
        self.hint = hint  # why, and what to do: appended to the message after a comma
        held = f", held by calls in flight ${reserved:.6f}" if reserved else ""
        message = (
            f"Budget exceeded for user {user!r}: spent ${spend:.6f} of ${budget:.6f}{held}; "
            f"this call is estimated at ${estimate:.6f}{', ' + hint if hint else ''}"
        )
        super().__init__(
            current_cost=spend,
            max_budget=budget,
            message=message,
            entity_type="user",
            entity_id=user,
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.user, self.spend, self.budget, self.estimate, self.reserved, self.hint))


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


class StoreError(BudgetPluginError):
    """The budget store could not be used; the original exception is the ``__cause__``."""


class StoreLockTimeout(StoreError, TimeoutError):
    """The store's lock was not obtained in time; nothing was changed."""


class StoreCorruptError(StoreError):
    """A store file is not what we wrote; it is left untouched and not overwritten."""


class StoreUnavailableError(StoreError):
    """A budget server or Redis could not be reached."""
