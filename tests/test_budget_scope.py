"""budget_scope: litellm calls made without user= are attributed to the scope in force, in the
code that runs inside it (threads started with a copied context, asyncio tasks), and nowhere else."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from test_guard import litellm_logging_worker_idle
from waiting import wait_until

from litellm_budget_plugin import (
    BudgetExceededError,
    BudgetScope,
    ConfigurationError,
    FileStore,
    budget_scope,
    current_scope,
)
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.subjects import MAX_TAGS

MESSAGES = [{"role": "user", "content": "hi"}]


def mock_call(**kwargs: Any) -> float:
    """A call answered by litellm itself; returns what litellm says it cost."""
    response = litellm.completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="hello there", max_tokens=50, **kwargs
    )
    return float(response._hidden_params["response_cost"])


async def async_mock_call(**kwargs: Any) -> float:
    response = await litellm.acompletion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="hello there", max_tokens=50, **kwargs
    )
    return float(response._hidden_params["response_cost"])


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[FileStore]:
    made = FileStore(tmp_path / "user_cost.json")
    yield made
    made.close()


def spends(store: FileStore) -> dict[str, float]:
    store.flush()  # the guard charges with charge_later
    return {key: record["current_cost"] for key, record in store.all().items()}


# --- the scope itself ------------------------------------------------------------------------


def test_scopes_nest_inner_user_and_team_win_tags_add_up() -> None:
    assert current_scope() == BudgetScope()
    with budget_scope(user="alice", team="red", tags=["chat"]) as outer:
        assert outer == BudgetScope("alice", "team:red", ("tag:chat",))
        with budget_scope(team="blue", tags=["search", "chat"]) as inner:
            assert inner == BudgetScope("alice", "team:blue", ("tag:chat", "tag:search"))
            assert current_scope() is inner
        with pytest.raises(RuntimeError), budget_scope(user="bob"):
            raise RuntimeError("left by an exception")
        assert current_scope() is outer
    assert current_scope() == BudgetScope()


@pytest.mark.parametrize(
    ("arguments", "names"),
    [
        ({"user": "foo:bar"}, "unknown subject kind 'foo'"),
        ({"user": "team:red"}, "names a team, not a user: pass team="),
        ({"user": ""}, "user id must not be empty"),
        ({"user": 7}, "user id must be a string"),
        ({"team": ""}, "team must not be empty"),
        ({"team": "team:"}, "names no team"),
        ({"tags": "search"}, "tags must be a list of strings"),
        ({"tags": ["search", None]}, "tags must be strings"),
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, f"at most {MAX_TAGS} tags"),
    ],
)
def test_bad_input_is_refused_when_the_scope_is_made(arguments: dict[str, Any], names: str) -> None:
    with budget_scope(user="alice"):
        with pytest.raises(ConfigurationError, match=names):
            budget_scope(**arguments)
        assert current_scope() == BudgetScope("alice")


def test_too_many_tags_with_the_outer_scopes_are_refused_on_entry() -> None:
    with budget_scope(tags=[f"a{i}" for i in range(MAX_TAGS)]) as outer:
        one_more = budget_scope(tags=["b"])
        with pytest.raises(ConfigurationError, match=f"at most {MAX_TAGS} tags"), one_more:
            pass
        with budget_scope(tags=["a0"]):  # already there: not one more
            pass
        assert current_scope() is outer


# --- calls attributed --------------------------------------------------------------------------


def test_calls_in_a_scope_are_charged_to_its_user_team_and_tags(file_store: FileStore, register) -> None:
    file_store.set_budget("tag:chat", 100.0)
    register(BudgetGuard(file_store))
    with budget_scope(user="alice", team="red", tags=["chat", "no-budget"]):
        cost = mock_call()
    mock_call()  # outside every scope, no user=: not tracked

    # a tag without a budget is not tracked; a team without one is
    assert spends(file_store) == pytest.approx({"alice": cost, "team:red": cost, "tag:chat": cost})


def test_a_scope_refuses_over_its_teams_budget(file_store: FileStore, register) -> None:
    file_store.set_budget("team:red", 1e-6)
    register(BudgetGuard(file_store))
    before = file_store.all()

    with budget_scope(user="alice", team="red"), pytest.raises(BudgetExceededError) as info:
        mock_call()

    assert info.value.subject == "team:red"
    assert file_store.all() == before


def test_threads_started_with_a_copied_context_are_attributed_plain_ones_are_not(
    file_store: FileStore, register
) -> None:
    register(BudgetGuard(file_store))
    costs: list[float] = []

    def run() -> None:
        costs.append(mock_call())

    with budget_scope(user="alice", team="red"):
        copied = threading.Thread(target=contextvars.copy_context().run, args=(run,))
        plain = threading.Thread(target=run)  # starts from an empty context
        for thread in (copied, plain):
            thread.start()
            thread.join(60)

    assert len(costs) == 2
    assert spends(file_store) == pytest.approx({"alice": costs[0], "team:red": costs[0]})


def test_asyncio_tasks_and_to_thread_keep_their_own_scope(file_store: FileStore, register) -> None:
    for tag in ("tag:a", "tag:b"):
        file_store.set_budget(tag, 100.0)
    register(BudgetGuard(file_store))

    async def as_user(user: str, tags: list[str]) -> float:
        with budget_scope(user=user, tags=tags):
            first = await async_mock_call()
            await asyncio.sleep(0)  # the other task runs its calls in between
            second = await asyncio.to_thread(mock_call)  # the thread gets a copy of the context
            return first + second

    async def both() -> list[float]:
        with budget_scope(team="red"):
            costs = list(await asyncio.gather(as_user("alice", ["a"]), as_user("bob", ["b"])))
        await litellm_logging_worker_idle()
        return costs

    alice, bob = asyncio.run(both())

    wait_until(lambda: set(spends(file_store)) == {"alice", "bob", "team:red", "tag:a", "tag:b"})
    assert spends(file_store) == pytest.approx(
        {"alice": alice, "tag:a": alice, "bob": bob, "tag:b": bob, "team:red": alice + bob}
    )
    # nothing held once the leases' spare is given back (their users idle for a moment)
    wait_until(lambda: not any(record.get("reservations") for record in file_store.all().values()))


def test_an_explicit_user_and_the_calls_metadata_win_over_the_scope(file_store: FileStore, register) -> None:
    for tag in ("tag:own", "tag:scoped"):
        file_store.set_budget(tag, 100.0)
    register(BudgetGuard(file_store))
    with budget_scope(user="alice", team="red", tags=["scoped"]):
        cost = mock_call(user="carol", metadata={"team": "blue", "tags": ["own"]})

    assert spends(file_store) == pytest.approx({"carol": cost, "team:blue": cost, "tag:own": cost, "tag:scoped": cost})


def test_a_scope_without_user_holds_its_team_alone(file_store: FileStore, register) -> None:
    register(BudgetGuard(file_store, anonymous_user=None))
    with budget_scope(team="red"):
        cost = mock_call()
    assert spends(file_store) == pytest.approx({"team:red": cost})


def test_the_router_is_attributed_too(file_store: FileStore, register) -> None:
    register(BudgetGuard(file_store))
    router = litellm.Router(
        model_list=[{"model_name": "m", "litellm_params": {"model": "gpt-4o-mini", "mock_response": "hello there"}}]
    )
    with budget_scope(user="alice"):
        sync = router.completion(model="m", messages=MESSAGES, max_tokens=50)
        asynchronous = asyncio.run(router.acompletion(model="m", messages=MESSAGES, max_tokens=50))

    costs = [float(r._hidden_params["response_cost"]) for r in (sync, asynchronous)]
    wait_until(lambda: spends(file_store).get("alice") == pytest.approx(sum(costs)))
