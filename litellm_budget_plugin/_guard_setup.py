"""What a BudgetGuard makes of its arguments: the store it uses and the budget of a user it has
never seen, each checked before anything is opened."""

from __future__ import annotations

import os
from typing import TypeVar

from . import budget
from .errors import ConfigurationError
from .manager import BudgetManager
from .stores import BudgetStore, NewBudget, store_from_url

T = TypeVar("T")

# What a record the store lacks is made with when it must be tracked without a limit: a user
# under unknown_users="track"; a team, a tag or the global budget whatever unknown_users says.
TRACKED = NewBudget(total_budget=None, duration=None)


def check_choice(name: str, value: T, choices: tuple[str, ...]) -> T:
    """``value`` if it is one of ``choices``, else a ConfigurationError naming them."""
    if value not in choices:
        raise ConfigurationError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
    return value


def new_user_budget(unknown_users: str, default_budget: float | None, default_duration: object) -> NewBudget | None:
    """The budget a user the store has never seen is given under ``unknown_users``: none
    (tracked), a refusal (None), or ``default_budget`` over ``default_duration``."""
    check_choice("unknown_users", unknown_users, ("track", "deny", "create"))
    if unknown_users == "track":
        return TRACKED
    if unknown_users == "deny":
        return None
    if default_budget is None:
        raise ConfigurationError('unknown_users="create" needs default_budget')
    return NewBudget(
        total_budget=budget.check_amount("default_budget", default_budget),
        duration=budget.parse_duration(default_duration),
    )


def store_of(budgets: BudgetManager | BudgetStore | str | os.PathLike[str] | None, project: str | None) -> BudgetStore:
    """The store a guard uses; ``project`` opens a URL's project, and must agree with an object's."""
    if project is not None and (not isinstance(project, str) or not project):
        raise ConfigurationError(f"project must be a non-empty string, got {project!r}")
    named: str | None
    if isinstance(budgets, BudgetManager):
        store, named = budgets.store, budgets.project_name
    elif isinstance(budgets, BudgetStore):
        store, named = budgets, getattr(budgets, "project_name", None) or getattr(budgets, "project", None)
    else:
        return store_from_url(budgets, project=project)  # a file store ignores it: a file holds one project
    if project is not None and named is not None and project != named:
        raise ConfigurationError(
            f"BudgetGuard(project={project!r}) was given {budgets!r} of project {named!r}: "
            "leave project= out, or pass a path or URL"
        )
    return store
