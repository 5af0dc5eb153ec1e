"""The over-budget error as litellm's own type: kept apart because it imports litellm (seconds).

Reached through :mod:`litellm_budget_plugin.errors`, which names it and says when it is raised.
"""

from __future__ import annotations

from litellm.exceptions import BudgetExceededError as LiteLLMBudgetExceededError

from .errors import BudgetRefusal


class BudgetExceededError(BudgetRefusal, LiteLLMBudgetExceededError):
    """A call would take ``user`` past ``budget``; litellm's own handlers still catch it."""

    __module__ = "litellm_budget_plugin.errors"  # its public home; pickle finds it there

    def __init__(
        self, user: str, spend: float, budget: float, estimate: float, reserved: float = 0.0, hint: str = ""
    ) -> None:
        LiteLLMBudgetExceededError.__init__(
            self,
            current_cost=spend,
            max_budget=budget,
            message=self._refuse(user, spend, budget, estimate, reserved, hint),
        )
        self.entity_type = "user"  # litellm's own fields, which its constructor takes only from about 1.81 on
        self.entity_id = user
