"""BudgetGuard's first hour: which project it uses, what a refusal says, and litellm's global budget."""

from __future__ import annotations

import asyncio
import math
import pickle
import subprocess
import sys
import textwrap
import time
from typing import Any

import litellm
import pytest
from fake_openai import FakeOpenAI
from server_thread import ServerThread, directory_stores
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, BudgetManager, ConfigurationError, FileStore
from litellm_budget_plugin.guard import GLOBAL_USER, BudgetGuard
from litellm_budget_plugin.stores.http import HttpStore

MESSAGES = [{"role": "user", "content": "hi"}]


def mock_call(**kwargs: Any) -> Any:
    return litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", **kwargs)


# --- project= ---------------------------------------------------------------------------------


def test_project_names_the_project_of_a_server_url(tmp_path, register) -> None:
    with ServerThread(directory_stores(tmp_path)) as server:
        chatbot = HttpStore(server.url, "chatbot")
        chatbot.set_budget("alice", 0.0)
        guard = register(BudgetGuard(server.url, project="chatbot"))
        assert isinstance(guard.store, HttpStore) and guard.store.project_name == "chatbot"
        with pytest.raises(BudgetExceededError):
            mock_call(user="alice")
        litellm.callbacks.remove(guard)
        elsewhere = register(BudgetGuard(server.url))  # the project "default", where alice has no budget
        mock_call(user="alice")
        for store in (chatbot, guard.store, elsewhere.store):
            store.close()


def test_project_must_agree_with_a_manager_or_store_given(tmp_path) -> None:
    manager = BudgetManager("app", store=tmp_path / "user_cost.json")
    assert BudgetGuard(manager, project="app").store is manager.store
    with pytest.raises(ConfigurationError, match="project 'app'"):
        BudgetGuard(manager, project="other")
    remote = HttpStore("http://127.0.0.1:9", "app")  # never contacted
    with pytest.raises(ConfigurationError, match="project 'app'"):
        BudgetGuard(remote, project="other")
    assert BudgetGuard(manager.store, project="any").store is manager.store  # a file holds one project
    with pytest.raises(ConfigurationError, match="project must be a non-empty string"):
        BudgetGuard(tmp_path / "user_cost.json", project="")
    manager.close()


# --- what a refusal says ------------------------------------------------------------------


def test_refusal_names_max_tokens_when_assumed_output_dominates(manager, register) -> None:
    manager.create_budget(0.0001, "alice")
    register(BudgetGuard(manager))
    with pytest.raises(BudgetExceededError) as info:
        mock_call(user="alice")
    message = str(info.value)
    assert litellm.model_cost["gpt-4o-mini"]["max_output_tokens"] == 16_384  # 16,384 x $6e-7 = $0.0098304
    assert (
        "this call is estimated at $0.009832, of which $0.009830 is 16,384 output tokens, "
        "the most gpt-4o-mini can write (no max_tokens given)"
    ) in message
    assert "pass max_tokens= to hold less" in message
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == message and copy.hint == info.value.hint

    mock_call(user="alice", max_tokens=50)  # what the hint says to do
    with pytest.raises(BudgetExceededError) as info:
        mock_call(user="alice", max_tokens=1000)
    assert "assumed" not in str(info.value) and info.value.hint == ""  # the caller chose 1,000


def test_async_refusal_names_max_tokens_too(manager, register) -> None:
    manager.create_budget(0.0001, "alice")
    register(BudgetGuard(manager))

    async def go() -> None:
        await litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", user="alice", n=2)

    with pytest.raises(BudgetExceededError, match=r"16,384 output tokens, the most .* for each of 2 choices"):
        asyncio.run(go())


def test_refusal_with_output_token_cap_says_the_tokens_are_assumed(manager, register) -> None:
    manager.create_budget(0.0001, "alice")
    register(BudgetGuard(manager, output_token_cap=4096))
    with pytest.raises(BudgetExceededError) as info:
        mock_call(user="alice")
    assert "this call is estimated at $0.002459, of which $0.002458 is 4,096 assumed output tokens" in str(info.value)


def test_refusal_of_an_unknown_user_says_how_to_admit_it(manager, register) -> None:
    register(BudgetGuard(manager, unknown_users="deny"))
    with pytest.raises(BudgetExceededError, match=r"'bob' has no budget.*create_budget"):
        mock_call(user="bob", max_tokens=10)


# --- litellm's global budget ----------------------------------------------------------------

SEED_QUICK_START = textwrap.dedent(
    """
    import os
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm
    from litellm import completion
    from litellm_budget_plugin.guard import BudgetGuard

    litellm.callbacks.append(BudgetGuard())
    litellm.max_budget = 0.001
    messages = [{"role": "user", "content": "Hey, how's it going"}]
    completion(model="gpt-4", messages=messages, mock_response="Going well!")
    print("first call made")
    try:
        completion(model="gpt-4", messages=messages, mock_response="Going well!")
        print("second call made")
    except litellm.BudgetExceededError:
        print("second call refused")
    """
)


def test_quick_start_runs_again_in_the_same_folder(tmp_path) -> None:
    """litellm.max_budget is each process's own: a second run starts from nothing spent."""
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", SEED_QUICK_START], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[:2] == ["first call made", "second call refused"]
        assert "Traceback" not in out.stderr


def test_process_budget_holds_calls_in_flight_and_frees_them(tmp_path, register) -> None:
    """LiteLLM's (soft) rule over spend and holds: while a call that could cost more than the
    budget is in flight, the next is refused; once it ends (served or failed), calls go on."""
    register(BudgetGuard(tmp_path / "user_cost.json"))
    litellm.max_budget = 0.002
    big = {"max_tokens": 5000}  # gpt-4o-mini: a $0.003 hold

    async def two_at_once() -> list[bool]:
        async def one() -> bool:
            try:
                await litellm.acompletion(
                    model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", mock_delay=0.5, **big
                )
                return True
            except BudgetExceededError:
                return False

        results = list(await asyncio.gather(one(), one()))
        while litellm._current_cost == 0:  # async calls are settled by a task of this loop
            await asyncio.sleep(0.01)
        return results

    assert sorted(asyncio.run(asyncio.wait_for(two_at_once(), 10))) == [False, True]
    spent = litellm._current_cost
    mock_call(**big)  # the served call's hold has ended
    assert litellm._current_cost > spent
    server = FakeOpenAI().start()
    server.fail_next(1, status=500)
    with pytest.raises(litellm.InternalServerError):
        litellm.completion(
            model="openai/gpt-4o-mini", api_base=server.url, api_key="k", messages=MESSAGES, max_retries=0, **big
        )
    server.stop()

    def admitted() -> bool:
        try:
            mock_call(**big)
            return True
        except BudgetExceededError:
            return False

    wait_until(admitted)  # the failed call's hold ends with litellm's failure event
    store = FileStore(tmp_path / "user_cost.json")
    assert store.get(GLOBAL_USER) is None  # nothing of it in the store
    store.close()


def test_global_duration_needs_a_store_wide_budget(manager, tmp_path) -> None:
    with pytest.raises(ConfigurationError, match='global_budget="store"'):
        BudgetGuard(manager, global_duration="daily")
    folder = tmp_path / "untouched"
    folder.mkdir()
    with pytest.raises(ConfigurationError, match="mode"):
        BudgetGuard(folder / "user_cost.json", mode="lenient")  # type: ignore[arg-type]
    assert list(folder.iterdir()) == []  # bad arguments open no store
    with pytest.raises(ConfigurationError, match="global_budget"):
        BudgetGuard(manager, global_budget="machine")  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [-5000, 0, 10_000_001, "abc", math.nan, 4096.0, True])
def test_output_token_cap_must_be_a_sane_number_of_tokens(cap: Any, tmp_path) -> None:
    with pytest.raises(
        ConfigurationError, match="output_token_cap must be a whole number of tokens from 1 to 10,000,000"
    ):
        BudgetGuard(tmp_path / "user_cost.json", output_token_cap=cap)
    assert list(tmp_path.iterdir()) == []  # bad arguments open no store


@pytest.mark.parametrize("cap", [1, 10_000_000, None])
def test_output_token_cap_bounds_and_none_are_accepted(cap: int | None, manager) -> None:
    assert BudgetGuard(manager, output_token_cap=cap).output_token_cap == cap


def test_process_budget_hold_of_a_call_that_never_reports_back_expires(monkeypatch, register) -> None:
    from litellm_budget_plugin._process_budget import ProcessBudget

    process = ProcessBudget()
    process.hold("abandoned-stream", limit=0.01, estimate=0.02, ttl=30)
    with pytest.raises(BudgetExceededError, match="this process's spend"):
        process.hold("next", limit=0.01, estimate=0.001, ttl=30)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 31)
    process.hold("next", limit=0.01, estimate=0.001, ttl=30)
    process.end("next", cost=0.0005)
    assert litellm._current_cost == pytest.approx(0.0005)
