"""A framework calling litellm underneath (LangChain's ChatLiteLLM, from the dev extra) passes no
user=: budget_scope attributes its calls, which the guard charges and refuses like any other.

Not in .ci/litellm-matrix: langchain-litellm needs a newer litellm than the oldest tested there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI

from litellm_budget_plugin import BudgetExceededError, FileStore, budget_scope
from litellm_budget_plugin.guard import BudgetGuard

langchain_litellm = pytest.importorskip("langchain_litellm", reason="pip install -e .[dev]")

SERVER_COST = PROMPT_TOKENS * 1.5e-7 + COMPLETION_TOKENS * 6e-7  # gpt-4o-mini, as the fake server bills


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[FileStore]:
    made = FileStore(tmp_path / "user_cost.json")
    yield made
    made.close()


def chat_model(server: FakeOpenAI) -> object:
    return langchain_litellm.ChatLiteLLM(model="openai/gpt-4o-mini", api_base=server.url, api_key="k", max_tokens=50)


def spends(store: FileStore) -> dict[str, float]:
    store.flush()  # the guard charges with charge_later
    return {key: record["current_cost"] for key, record in store.all().items()}


def test_chat_litellm_calls_in_a_scope_are_charged_to_its_user_and_team(
    server: FakeOpenAI, file_store: FileStore, register
) -> None:
    register(BudgetGuard(file_store))
    model = chat_model(server)

    with budget_scope(user="alice", team="red"):
        answer = model.invoke("hello")  # type: ignore[attr-defined]

    assert answer.content == "Hello from the fake server."
    assert spends(file_store) == pytest.approx({"alice": SERVER_COST, "team:red": SERVER_COST})

    async def in_a_task() -> None:
        with budget_scope(user="alice", team="red"):
            await model.ainvoke("hello")  # type: ignore[attr-defined]

    asyncio.run(in_a_task())
    assert spends(file_store) == pytest.approx({"alice": 2 * SERVER_COST, "team:red": 2 * SERVER_COST})
    assert server.count == 2


def test_chat_litellm_calls_over_the_scopes_team_budget_are_refused(
    server: FakeOpenAI, file_store: FileStore, register
) -> None:
    file_store.set_budget("alice", 1.0)
    file_store.set_budget("team:red", 1e-6)
    register(BudgetGuard(file_store))
    model = chat_model(server)
    before = file_store.all()

    with budget_scope(user="alice", team="red"), pytest.raises(BudgetExceededError) as info:
        model.invoke("hello")  # type: ignore[attr-defined]

    assert info.value.subject == "team:red"
    assert server.count == 0 and file_store.all() == before
