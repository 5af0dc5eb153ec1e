"""The over-budget error as litellm's own type: kept apart because it imports litellm (seconds).

Reached through :mod:`litellm_budget_plugin.errors`, which names it and says when it is raised.
"""

from __future__ import annotations

from litellm.exceptions import BudgetExceededError as LiteLLMBudgetExceededError

from .errors import BudgetRefusal, entity_of


class BudgetExceededError(BudgetRefusal, LiteLLMBudgetExceededError):
    """A call would take ``user`` past ``budget``; litellm's own handlers still catch it."""

    __module__ = "litellm_budget_plugin.errors"  # its public home; pickle finds it there

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
        LiteLLMBudgetExceededError.__init__(
            self,
            current_cost=spend,
            max_budget=budget,
            message=self._refuse(user, spend, budget, estimate, reserved, hint, window),
        )
        # litellm's own fields (its constructor takes them only from about 1.81 on): "team", "red"
        self.entity_type, self.entity_id = entity_of(user)
