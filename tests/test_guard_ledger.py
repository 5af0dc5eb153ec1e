"""Guarded litellm calls land in the ledger with their tokens and tags."""

from __future__ import annotations

from collections.abc import Callable

import litellm
import pytest
from waiting import wait_until

from litellm_budget_plugin import BudgetManager
from litellm_budget_plugin.guard import BudgetGuard

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]


def test_guarded_calls_are_in_the_ledger_with_their_tokens_and_tags(
    manager: BudgetManager, register: Callable[[BudgetGuard], BudgetGuard]
) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    response = litellm.completion(
        model=MODEL, messages=MESSAGES, user="alice", metadata={"team": "red", "tags": ["search"]}, mock_response="hi"
    )
    wait_until(lambda: len(list(manager.store.ledger())) == 1)
    (entry,) = manager.store.ledger()
    assert entry.user == "alice" and entry.subjects == ("team:red", "tag:search")
    assert (entry.prompt_tokens, entry.completion_tokens) == (
        response.usage.prompt_tokens,
        response.usage.completion_tokens,
    )
    assert entry.prompt_tokens > 0 and entry.cost == pytest.approx(manager.get_current_cost("alice"))
