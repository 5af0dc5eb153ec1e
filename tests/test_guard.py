"""BudgetGuard against real litellm calls: mock responses and a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import litellm
import pytest
from fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI
from litellm import completion  # imported before any guard exists: must still be guarded
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, BudgetManager, FileStore, StoreLockTimeout
from litellm_budget_plugin.guard import GLOBAL_USER, BudgetGuard

MODEL = "openai/gpt-4o-mini"
IN_PRICE, OUT_PRICE = 1.5e-7, 6e-7
SERVER_COST = PROMPT_TOKENS * IN_PRICE + COMPLETION_TOKENS * OUT_PRICE
MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT_TOKENS_ESTIMATE = litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES)


async def async_wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """The loop must keep running while litellm's async success logging finishes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def litellm_logging_worker_idle() -> None:
    """litellm 1.80's asyncio.run can hang at exit if its logging worker is busy then (a race in
    cancelling it): let the worker finish the success events of the calls made."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    queue = getattr(GLOBAL_LOGGING_WORKER, "_queue", None)
    await async_wait_until(lambda: getattr(queue, "_unfinished_tasks", 0) == 0)


def spend(manager: BudgetManager, user: str) -> float:
    return manager.get_current_cost(user)


def call(server: FakeOpenAI, **kwargs: Any) -> Any:
    return completion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


# --- refusing before the provider is contacted ---------------------------------------------


def test_sync_call_over_budget_never_reaches_provider(server, manager, register) -> None:
    manager.create_budget(1e-6, "alice")
    register(BudgetGuard(manager))
    with pytest.raises(BudgetExceededError) as info:
        call(server, user="alice", max_tokens=100)
    assert isinstance(info.value, litellm.BudgetExceededError)
    assert server.count == 0
    assert info.value.user == "alice" and info.value.budget == 1e-6
    assert info.value.estimate == pytest.approx(PROMPT_TOKENS_ESTIMATE * IN_PRICE + 100 * OUT_PRICE)
    assert "alice" in str(info.value) and "estimated" in str(info.value)
    assert spend(manager, "alice") == 0.0


def test_async_call_over_budget_never_reaches_provider(server, manager, register) -> None:
    manager.create_budget(1e-6, "alice")
    register(BudgetGuard(manager))

    async def go() -> None:
        await litellm.acompletion(
            model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, user="alice", max_tokens=100
        )

    with pytest.raises(BudgetExceededError):
        asyncio.run(go())
    assert server.count == 0
    assert not manager.store.get("alice").get("reservations")  # type: ignore[union-attr]


# --- charging the actual cost ----------------------------------------------------------


def test_sync_call_is_charged_its_actual_cost(server, manager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    call(server, user="alice")
    wait_until(lambda: spend(manager, "alice") > 0)
    assert spend(manager, "alice") == pytest.approx(SERVER_COST)
    assert manager.get_model_cost("alice") == {"gpt-4o-mini": pytest.approx(SERVER_COST)}
    assert not manager.store.get("alice").get("reservations")  # type: ignore[union-attr]
    assert server.count == 1


def test_sync_call_is_still_charged_by_its_success_event_without_the_inline_hook(
    server, manager, register, monkeypatch
) -> None:
    """The inline settlement is a shortcut: if litellm stops calling update_response_metadata,
    litellm's success event (on its logging thread) charges the call instead."""
    import litellm.utils

    register(BudgetGuard(manager))
    hooked = litellm.utils.update_response_metadata  # type: ignore[attr-defined]
    assert getattr(hooked, "__budget_guard__", False)
    monkeypatch.setattr(litellm.utils, "update_response_metadata", hooked.__wrapped__)
    manager.create_budget(1.0, "alice")
    call(server, user="alice")
    wait_until(lambda: spend(manager, "alice") > 0)
    assert spend(manager, "alice") == pytest.approx(SERVER_COST)
    assert not manager.store.get("alice").get("reservations")  # type: ignore[union-attr]


def test_async_call_is_charged_its_actual_cost(server, manager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))

    async def go() -> None:
        await litellm.acompletion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, user="alice")
        await async_wait_until(lambda: spend(manager, "alice") > 0)

    asyncio.run(go())
    assert spend(manager, "alice") == pytest.approx(SERVER_COST)


def test_calls_without_user_pass_untracked(server, manager, register) -> None:
    register(BudgetGuard(manager))
    call(server)
    assert server.count == 1
    assert manager.get_users() == []


def test_anonymous_user_is_charged_calls_without_user(server, manager, register) -> None:
    manager.create_budget(1.0, "anonymous")
    register(BudgetGuard(manager, anonymous_user="anonymous"))
    call(server)
    wait_until(lambda: spend(manager, "anonymous") > 0)


@pytest.mark.parametrize("kind", ["text", "embedding"])
def test_text_completion_and_embedding_are_checked_and_charged(server, manager, register, kind) -> None:
    manager.create_budget(1.0, "alice")
    manager.create_budget(0.0, "broke")
    register(BudgetGuard(manager))

    def run(user: str, is_async: bool) -> None:
        common = {"api_base": server.url, "api_key": "k", "user": user}
        if kind == "text":
            fn, afn = litellm.text_completion, litellm.atext_completion
            common |= {"model": "openai/gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 50}
        else:
            fn, afn = litellm.embedding, litellm.aembedding
            common |= {"model": "openai/text-embedding-3-small", "input": ["hi"]}
        if is_async:

            async def go() -> None:
                await afn(**common)
                await async_wait_until(lambda: spend(manager, user) > before)

            before = spend(manager, user) if manager.is_valid_user(user) else 0.0
            asyncio.run(go())
        else:
            fn(**common)

    for is_async in (False, True):
        with pytest.raises(BudgetExceededError):
            run("broke", is_async)
    assert server.count == 0
    run("alice", False)
    wait_until(lambda: spend(manager, "alice") > 0)
    first = spend(manager, "alice")
    run("alice", True)
    assert spend(manager, "alice") == pytest.approx(2 * first)
    assert server.count == 2


def test_mock_response_calls_are_charged(manager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hello", user="alice")
    wait_until(lambda: spend(manager, "alice") > 0)
    assert spend(manager, "alice") == pytest.approx(response._hidden_params["response_cost"])


# --- failures, streams, retries -----------------------------------------------------------


def test_failed_call_releases_its_hold_and_charges_nothing(server, manager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    server.fail_next(5, status=500)
    with pytest.raises(litellm.InternalServerError):
        call(server, user="alice", max_retries=0)
    wait_until(lambda: not manager.store.get("alice").get("reservations"))  # type: ignore[union-attr]
    assert spend(manager, "alice") == 0.0


@pytest.mark.parametrize("with_usage", [True, False])
def test_sync_stream_is_charged_once_at_its_end(server, manager, register, with_usage) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    options = {"stream_options": {"include_usage": True}} if with_usage else {}
    chunks = list(call(server, user="alice", stream=True, **options))
    assert chunks
    wait_until(lambda: spend(manager, "alice") > 0)
    time.sleep(0.2)  # a second charge, if any, would land within this
    charged = spend(manager, "alice")
    if with_usage:
        assert charged == pytest.approx(SERVER_COST)
    else:  # litellm counts the streamed text with its tokenizer
        assert 0 < charged < 1e-4
    assert len(manager.store.get("alice").get("applied", {})) == 1  # type: ignore[union-attr]


def test_async_stream_is_charged_once_at_its_end(server, manager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))

    async def go() -> None:
        stream = await litellm.acompletion(
            model=MODEL,
            api_base=server.url,
            api_key="k",
            messages=MESSAGES,
            user="alice",
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
        await async_wait_until(lambda: spend(manager, "alice") > 0)

    asyncio.run(go())
    assert spend(manager, "alice") == pytest.approx(SERVER_COST)


def test_abandoned_stream_holds_only_until_its_lease(server, manager, register) -> None:
    manager.create_budget(1.0, "alice")
    guard = register(BudgetGuard(manager, lease_seconds=30))
    stream = call(server, user="alice", stream=True, max_tokens=1000)
    next(iter(stream))  # the consumer stops after one chunk
    record = manager.store.get("alice")
    assert record is not None and len(record.get("reservations", {})) == 1
    now = time.time()
    guard.store.clock = lambda: now + 31  # type: ignore[attr-defined]
    record = manager.store.get("alice")
    assert record is not None and not record.get("reservations") and record["current_cost"] == 0.0


def test_stream_cut_midway_frees_its_hold(server, manager, register) -> None:
    """Newer litellm raises its mid-stream error and nothing is charged; up to about 1.95 the
    stream ends quietly and its success event charges what was streamed."""
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    server.cut_streams = 1
    try:
        list(call(server, user="alice", stream=True))
        raised = False
    except Exception:  # litellm's own mid-stream error type
        raised = True
    wait_until(lambda: not manager.store.get("alice").get("reservations"))  # type: ignore[union-attr]
    assert spend(manager, "alice") == 0.0 if raised else spend(manager, "alice") > 0


def test_router_fallback_charges_each_billed_attempt_once(server, manager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    params = {"api_base": server.url, "api_key": "k", "max_retries": 0}
    router = litellm.Router(
        model_list=[
            {"model_name": "primary", "litellm_params": {"model": MODEL, **params}},
            {"model_name": "backup", "litellm_params": {"model": "openai/gpt-4o", **params}},
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=0,
    )
    server.fail_next(1, status=500)
    router.completion(model="primary", messages=MESSAGES, user="alice")
    assert server.count == 2
    backup_cost = PROMPT_TOKENS * 2.5e-6 + COMPLETION_TOKENS * 1e-5
    wait_until(lambda: spend(manager, "alice") > 0)
    time.sleep(0.2)
    assert spend(manager, "alice") == pytest.approx(backup_cost)
    assert not manager.store.get("alice").get("reservations")  # type: ignore[union-attr]

    async def go() -> None:
        await router.acompletion(model="primary", messages=MESSAGES, user="alice")
        await async_wait_until(lambda: spend(manager, "alice") > backup_cost)

    asyncio.run(go())
    assert spend(manager, "alice") == pytest.approx(backup_cost + SERVER_COST)


def test_router_refuses_over_budget_users(server, manager, register) -> None:
    manager.create_budget(0.0, "broke")
    register(BudgetGuard(manager))
    router = litellm.Router(
        model_list=[{"model_name": "m", "litellm_params": {"model": MODEL, "api_base": server.url, "api_key": "k"}}]
    )
    with pytest.raises(BudgetExceededError):
        router.completion(model="m", messages=MESSAGES, user="broke")
    with pytest.raises(BudgetExceededError):
        asyncio.run(router.acompletion(model="m", messages=MESSAGES, user="broke"))
    assert server.count == 0


# --- modes and policies ---------------------------------------------------------------------


ESTIMATE_100 = PROMPT_TOKENS_ESTIMATE * IN_PRICE + 100 * OUT_PRICE


def race_calls(server: FakeOpenAI, manager: BudgetManager, run: Callable[[int], list[bool]]) -> None:
    """32 calls in flight at once on a budget that covers 10 of their worst cases."""
    limit = 10 * ESTIMATE_100 * (1 + 1e-9)
    manager.create_budget(limit, "alice")
    server.response_delay = 0.5  # every admitted call is still in flight when the last one asks
    outcomes = run(32)
    assert sum(outcomes) == 10
    assert server.count == 10
    wait_until(lambda: not manager.store.get("alice").get("reservations"))  # type: ignore[union-attr]
    assert spend(manager, "alice") == pytest.approx(10 * SERVER_COST)
    assert spend(manager, "alice") <= limit


def test_strict_mode_admits_no_more_than_the_budget_covers_threads(server, manager, register) -> None:
    register(BudgetGuard(manager))

    def run(count: int) -> list[bool]:
        results: list[bool] = []
        barrier = threading.Barrier(count)

        def one() -> None:
            barrier.wait()
            try:
                call(server, user="alice", max_tokens=100)
                results.append(True)
            except BudgetExceededError:
                results.append(False)

        threads = [threading.Thread(target=one) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    race_calls(server, manager, run)


def test_strict_mode_admits_no_more_than_the_budget_covers_tasks(server, manager, register) -> None:
    register(BudgetGuard(manager))

    async def one() -> bool:
        try:
            await litellm.acompletion(
                model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, user="alice", max_tokens=100
            )
            return True
        except BudgetExceededError:
            return False

    async def go(count: int) -> list[bool]:
        results = list(await asyncio.gather(*(one() for _ in range(count))))
        await async_wait_until(lambda: not manager.store.get("alice").get("reservations"))  # type: ignore[union-attr]
        await litellm_logging_worker_idle()
        return results

    race_calls(server, manager, lambda count: asyncio.run(go(count)))


def test_soft_mode_admits_while_under_budget(manager, register) -> None:
    register(BudgetGuard(manager, mode="soft"))
    manager.create_budget(1e-9, "alice")
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", user="alice", max_tokens=100)
    wait_until(lambda: spend(manager, "alice") > 0)
    with pytest.raises(BudgetExceededError):
        litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", user="alice")


def test_unknown_users_policies(manager, register) -> None:
    def go(user: str) -> None:
        litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", user=user)

    track = register(BudgetGuard(manager))
    go("tracked")
    wait_until(lambda: manager.is_valid_user("tracked") and spend(manager, "tracked") > 0)
    assert manager.get_total_budget("tracked") is None
    litellm.callbacks.remove(track)

    register(BudgetGuard(manager, unknown_users="deny"))
    with pytest.raises(BudgetExceededError):
        go("stranger")
    assert not manager.is_valid_user("stranger")
    litellm.logging_callback_manager._reset_all_callbacks()

    register(BudgetGuard(manager, unknown_users="create", default_budget=0.5, default_duration="daily"))
    go("newcomer")
    record = manager.store.get("newcomer")
    assert record is not None and record["total_budget"] == 0.5 and record["duration"] == 1.0


def test_store_failure_fails_closed_by_default_and_open_by_option(tmp_path, register) -> None:
    store = FileStore(tmp_path / "user_cost.json", lock_timeout=0.05)
    store.set_budget("alice", 1.0)
    guard = register(BudgetGuard(store))
    holder = filelock.FileLock(str(store.lock_path))
    with holder:
        with pytest.raises(StoreLockTimeout):
            litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", user="alice")
        guard.on_store_error = "open"
        response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", user="alice")
        assert response.choices[0].message.content == "hi"


def test_alert_fires_once_when_crossing_threshold(manager, register) -> None:
    alerts: list[tuple[str, float, float]] = []
    register(BudgetGuard(manager, alert_threshold=0.5, on_alert=lambda *a: alerts.append(a)))
    manager.create_budget(1.0, "alice")
    manager.store.charge("alice", 0.4996, "m")  # each mock call costs 2.25e-4: the 2nd crosses
    for _ in range(3):
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="x" * 4000, user="alice", max_tokens=1)
    wait_until(lambda: len(manager.store.get("alice").get("applied", {})) == 3)  # type: ignore[union-attr]
    assert len(alerts) == 1 and alerts[0][0] == "alice" and alerts[0][1] >= 0.5


# --- litellm's global budget ---------------------------------------------------------------


def test_seed_quick_start_global_budget_raises(manager, register) -> None:
    register(BudgetGuard(manager))
    litellm.max_budget = 0.001
    messages = [{"role": "user", "content": "Hey, how's it going"}]
    response = completion(model="gpt-4", messages=messages, mock_response="It's going well, thanks for asking! " * 3)
    # this process's spend, current when the call returns, and not written to the store
    assert litellm._current_cost == pytest.approx(response._hidden_params["response_cost"])
    assert not manager.is_valid_user(GLOBAL_USER)
    with pytest.raises(litellm.BudgetExceededError):
        completion(model="gpt-4", messages=messages, mock_response="again")


def test_store_wide_global_budget_is_shared_through_the_store(tmp_path, register) -> None:
    path = tmp_path / "user_cost.json"
    register(BudgetGuard(path, global_budget="store", global_duration="daily"))
    litellm.max_budget = 0.001
    response = completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi")
    other = FileStore(path)  # another process's view of the same store
    record = other.get(GLOBAL_USER)
    assert record is not None and record["total_budget"] == 0.001 and record["duration"] == 1.0
    assert litellm._current_cost == pytest.approx(record["current_cost"])
    assert record["current_cost"] == pytest.approx(response._hidden_params["response_cost"])
    other.charge(GLOBAL_USER, 0.002, "gpt-4")
    other.close()
    with pytest.raises(litellm.BudgetExceededError):
        completion(model="gpt-4", messages=MESSAGES, mock_response="hi")


def test_guard_demo_example_refuses_once_the_budget_is_spent(tmp_path) -> None:
    import subprocess
    import sys

    demo = Path(__file__).parent.parent / "examples" / "guard_demo.py"
    out = subprocess.run([sys.executable, str(demo)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr  # nothing fails at exit either (pending charges, cleanup)
    lines = out.stdout.splitlines()
    assert [line.split(":")[1].strip().split(",")[0] for line in lines] == ["admitted"] * 3 + [
        "refused before reaching the provider"
    ]
    assert "Budget exceeded for user 'alice'" in lines[-1]
    # each call is charged by the time it returns: the spend printed right after it grows
    spent = [float(line.rsplit("$", 1)[1]) for line in lines[:-1]]
    assert 0 < spent[0] < spent[1] < spent[2]
    assert list(tmp_path.iterdir()) == []
