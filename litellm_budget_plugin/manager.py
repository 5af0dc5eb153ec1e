"""A drop-in for ``litellm.BudgetManager``, over any store, without its faults.

LiteLLM's class keeps every user in a dict and rewrites the whole file from a background
thread after each change: changes are lost between processes, the file is torn when the
process dies, and each change costs time in proportion to the number of users. Here every
method is one atomic store operation that is durable before it returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from . import budget, pricing
from .errors import ConfigurationError, UnknownUserError
from .stores import BudgetStore, store_from_url

Duration = Literal["daily", "weekly", "monthly", "yearly"] | str | float


class BudgetManager:
    """LiteLLM's ``BudgetManager`` API, backed by a shared, crash-safe store.

    :param project_name: the project: it namespaces a Redis or HTTP store; a local file holds one project.
    :param client_type: ``"local"`` (a store chosen by ``store=``, ``$LITELLM_BUDGET_STORE`` or
        ``user_cost.json``) or ``"hosted"`` (a budget server at ``api_base``).
    :param store: a file path, a URL, or a store object.
    """

    def __init__(
        self,
        project_name: str,
        client_type: str = "local",
        api_base: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        store: str | os.PathLike[str] | BudgetStore | None = None,
    ) -> None:
        if not isinstance(project_name, str) or not project_name:
            raise ConfigurationError("project_name must be a non-empty string")
        self.project_name = project_name
        self.client_type = client_type
        self.api_base = api_base
        self.headers = headers
        if client_type == "local":
            # A Redis or HTTP store keeps each project apart; a file holds one project.
            self.store = store_from_url(store, project=project_name)
        elif client_type == "hosted":
            if api_base is None:
                raise ConfigurationError('client_type="hosted" needs api_base, the budget server URL')
            self.store = store_from_url(api_base, project=project_name, headers=headers)
        else:
            raise ConfigurationError(f'client_type must be "local" or "hosted", got {client_type!r}')

    def __repr__(self) -> str:
        return f"BudgetManager({self.project_name!r}, store={self.store!r})"

    # -- budgets -------------------------------------------------------------------------

    def create_budget(
        self,
        total_budget: float,
        user: str,
        duration: Duration | None = None,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """Give ``user`` a budget; for a known user, change it and keep what was spent."""
        return budget.litellm_view(self.store.set_budget(user, total_budget, duration, created_at))

    def get_total_budget(self, user: str) -> float | None:
        return self._record(user)["total_budget"]

    def get_current_cost(self, user: str) -> float:
        return self._record(user)["current_cost"]

    def get_model_cost(self, user: str) -> dict[str, float]:
        return dict(self._record(user)["model_cost"])

    def is_valid_user(self, user: str) -> bool:
        return self.store.get(user) is not None

    def get_users(self) -> list[str]:
        return list(self.store.all())

    @property
    def user_dict(self) -> dict[str, dict[str, Any]]:
        """A read-only copy of every record, as LiteLLM's attribute of that name shows them."""
        return {user: budget.litellm_view(r) for user, r in self.store.all().items()}

    # -- costs ---------------------------------------------------------------------------

    def projected_cost(self, model: str, messages: Iterable[Mapping[str, Any]], user: str) -> float:
        """Spend so far plus this prompt's input cost (list content and tool calls count)."""
        current = self._record(user)["current_cost"]
        return current + pricing.estimate_cost(model, messages=list(messages))

    def update_cost(
        self,
        user: str,
        completion_obj: Any = None,
        model: str | None = None,
        input_text: str | None = None,
        output_text: str | None = None,
    ) -> dict[str, Any]:
        """Charge a response, or texts priced as LiteLLM does; returns ``{"user": record}``."""
        if model and input_text is not None and output_text is not None:
            cost = pricing.text_cost(model, input_text, output_text)
        elif completion_obj is not None:
            cost = pricing.response_cost(completion_obj, model)
            model = str(completion_obj["model"])
        else:
            raise ConfigurationError("update_cost needs a completion_obj, or model, input_text and output_text")
        budget.check_user(user)
        call_id = getattr(completion_obj, "id", None) if completion_obj is not None else None
        record = self.store.charge(user, cost, model, call_id=call_id or None)
        return {"user": budget.litellm_view(record)}

    def reset_cost(self, user: str) -> dict[str, Any]:
        return {"user": budget.litellm_view(self.store.reset(user))}

    def reset_on_duration(self, user: str) -> None:
        """Windows roll by themselves on every read and write; this persists the roll now."""
        self.store.roll(user)

    def update_budget_all_users(self) -> None:
        for user, record in self.store.all().items():
            if "duration" in record:
                self.store.roll(user)

    def save_data(self) -> dict[str, str]:
        """Changes are saved as they happen; this also brings the JSON file up to date."""
        compact = getattr(self.store, "compact", None)
        if callable(compact):
            compact()
        return {"status": "success"}

    def close(self) -> None:
        self.store.close()

    def _record(self, user: str) -> budget.UserRecord:
        record = self.store.get(user)
        if record is None:
            raise UnknownUserError(user)
        return record
