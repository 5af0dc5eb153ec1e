"""litellm.max_budget under BudgetGuard: litellm._current_cost is the process's (or the store
record's), whatever the number of guards, windows, settlement order or store outages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import litellm
import pytest
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, FileStore
from litellm_budget_plugin._process_budget import StoreSpendShown
from litellm_budget_plugin.budget import UserRecord, new_record
from litellm_budget_plugin.guard import GLOBAL_USER, BudgetGuard

MESSAGES = [{"role": "user", "content": "hi"}]
HOUR = 3600.0


def mock_call(**kwargs: Any) -> Any:
    return litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hello there", **kwargs)


def cost_of(response: Any) -> float:
    return float(response._hidden_params["response_cost"])


# --- global_budget="store": litellm._current_cost follows the record --------------------------


def test_store_wide_budget_admits_again_once_its_window_resets(tmp_path: Path, register) -> None:
    """litellm's wrapper compares litellm._current_cost with max_budget right after the guard's
    check: the new window's spend must be there, not the last window's."""
    now = [time.time()]
    store = FileStore(tmp_path / "user_cost.json")
    store.clock = lambda: now[0]  # type: ignore[method-assign]
    register(BudgetGuard(store, global_budget="store", global_duration="1h"))
    litellm.max_budget = 1e-5
    first = mock_call(max_tokens=5)  # $0.0000135: over the budget once charged
    assert litellm._current_cost == pytest.approx(cost_of(first))
    with pytest.raises(BudgetExceededError, match=r"litellm\.max_budget"):
        mock_call(max_tokens=5)
    now[0] += HOUR
    second = mock_call(max_tokens=5)  # a new window: litellm's own check must let it through
    assert litellm._current_cost == pytest.approx(cost_of(second))
    assert store.get(GLOBAL_USER)["current_cost"] == pytest.approx(cost_of(second))  # type: ignore[index]
    store.close()


def test_store_wide_spend_follows_the_record_after_concurrent_async_calls(tmp_path: Path, register) -> None:
    """Worker threads settle async calls on a store-wide budget and may finish out of order:
    once all are settled, litellm._current_cost is the record's spend, not an older one."""
    guard = register(BudgetGuard(tmp_path / "user_cost.json", global_budget="store", global_duration="daily"))
    litellm.max_budget = 10.0

    async def many() -> float:
        responses = await asyncio.gather(
            *(
                litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hello there")
                for _ in range(12)
            )
        )
        return sum(cost_of(response) for response in responses)

    spent = asyncio.run(asyncio.wait_for(many(), 60))
    record = lambda: guard.store.get(GLOBAL_USER)  # noqa: E731
    wait_until(lambda: record()["current_cost"] == pytest.approx(spent))
    wait_until(lambda: litellm._current_cost == pytest.approx(spent))
    assert not record().get("reservations")


def record_of(window: float, spend: float) -> UserRecord:
    record = new_record(1.0, "daily", window)
    record["current_cost"] = spend
    return record


def test_spend_shown_never_goes_back_within_a_window() -> None:
    shown = StoreSpendShown()
    shown.show(record_of(1000.0, 0.3))
    shown.show(record_of(1000.0, 0.2))  # a settlement that finished late
    assert litellm._current_cost == 0.3
    shown.show(record_of(1000.0 - 86400, 0.9), admitted=True)  # a record of the last window
    assert litellm._current_cost == 0.3
    shown.show(record_of(1000.0 + 86400, 0.1))  # the next window starts low
    assert litellm._current_cost == 0.1
    shown.show(record_of(1000.0, 0.5))  # a late one from the window before
    assert litellm._current_cost == 0.1
    shown.show(record_of(1000.0 + 86400, 0.0), admitted=True)  # spend reset by hand: admission shows it
    assert litellm._current_cost == 0.0
    litellm._current_cost = 0


# --- global_budget="process": one budget per process ------------------------------------------


def test_two_guards_count_a_call_once(tmp_path: Path, register) -> None:
    register(BudgetGuard(tmp_path / "a.json"))
    register(BudgetGuard(tmp_path / "b.json"))
    litellm.max_budget = 1.0
    first = mock_call()

    async def one_async() -> Any:
        return await litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hello there")

    second = asyncio.run(one_async())
    assert litellm._current_cost == pytest.approx(cost_of(first) + cost_of(second))


def test_store_down_in_open_mode_still_counts_calls_against_the_process_budget(register) -> None:
    """on_store_error="open" lets calls through while the user store is down; the process budget
    is memory, not the store, and still counts and stops them."""
    guard = register(BudgetGuard("http://127.0.0.1:9/", on_store_error="open"))
    litellm.max_budget = 2e-5
    served = []
    with pytest.raises(BudgetExceededError, match=r"litellm\.max_budget"):
        for _ in range(5):
            served.append(cost_of(mock_call(user="alice", max_tokens=5)))
    assert len(served) == 2  # $0.0000135 each: the third starts over the budget
    assert litellm._current_cost == pytest.approx(sum(served))
    assert not guard._holds
    guard.store.close()
