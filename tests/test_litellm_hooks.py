"""The litellm internals BudgetGuard relies on, proved on the installed litellm.

CI runs this file on the oldest supported litellm, one from the middle and the newest
(.ci/litellm-matrix). Each test names the hook it proves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import litellm
import litellm.utils
import pytest
from fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI
from litellm.integrations.custom_logger import CustomLogger
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, BudgetStore, FileStore, hooks
from litellm_budget_plugin.guard import BudgetGuard, GuardInstallError

MODEL = "openai/gpt-4o-mini"
SERVER_COST = PROMPT_TOKENS * 1.5e-7 + COMPLETION_TOKENS * 6e-7
MESSAGES = [{"role": "user", "content": "hi"}]


def acall(server: FakeOpenAI, **kwargs: Any) -> Any:
    return litellm.acompletion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


def call(server: FakeOpenAI, **kwargs: Any) -> Any:
    return litellm.completion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


def estimate(max_tokens: int) -> float:
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES)
    return prompt * 1.5e-7 + max_tokens * 6e-7


# --- the version ----------------------------------------------------------------------------


def test_installed_litellm_is_supported_and_both_hooks_are_installed(manager, register) -> None:
    hooks.check_litellm_version(hooks.litellm_version())
    register(BudgetGuard(manager))
    assert getattr(litellm.utils.function_setup, "__budget_guard__", False)
    assert getattr(litellm.utils.update_response_metadata, "__budget_guard__", False)  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", ["1.80.0", "1.80.0rc1", "1.95.1", "1.110.2", "1.110.2.post1", "1.800", "2.0.0"])
def test_supported_versions_pass_the_check(version: str) -> None:
    hooks.check_litellm_version(version)


@pytest.mark.parametrize("version", ["1.79.3", "1.8.0", "1.70.0", "0.99.0"])
def test_older_litellm_is_refused_naming_its_version_and_the_range(version: str) -> None:
    with pytest.raises(GuardInstallError, match=rf"litellm {version} is too old.*litellm>=1\.80"):
        hooks.check_litellm_version(version)


@pytest.mark.parametrize("version", ["", "latest", "v1.80", "1"])
def test_unreadable_version_is_refused_naming_it(version: str) -> None:
    with pytest.raises(GuardInstallError, match=rf"cannot read litellm's version '{version}'"):
        hooks.check_litellm_version(version)


def test_guard_refuses_to_start_on_an_old_litellm_and_changes_nothing(monkeypatch, manager) -> None:
    monkeypatch.setattr(hooks, "_installed", False)
    monkeypatch.setattr(hooks.metadata, "version", lambda name: "1.79.3")
    before = litellm.utils.function_setup, litellm.utils.update_response_metadata  # type: ignore[attr-defined]
    with pytest.raises(GuardInstallError, match=r"litellm 1\.79\.3 is too old"):
        BudgetGuard(manager)
    assert (litellm.utils.function_setup, litellm.utils.update_response_metadata) == before  # type: ignore[attr-defined]


def test_litellm_without_package_metadata_is_refused_naming_where_it_came_from(monkeypatch) -> None:
    def no_metadata(name: str) -> str:
        raise hooks.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(hooks.metadata, "version", no_metadata)
    with pytest.raises(GuardInstallError, match=r"cannot tell which litellm is installed .*litellm>=1\.80"):
        hooks.litellm_version()


# --- the start-up probe -------------------------------------------------------------------------


def test_guard_refuses_to_start_when_sync_hook_is_off_the_call_path(monkeypatch, manager) -> None:
    def bypass(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    BudgetGuard(manager)  # installed once
    original = litellm.utils.function_setup.__wrapped__
    bypass.__budget_guard__ = True  # type: ignore[attr-defined]  # looks installed, is not
    monkeypatch.setattr(litellm.utils, "function_setup", bypass)
    monkeypatch.setattr(hooks, "_installed", False)
    with pytest.raises(GuardInstallError, match=r"never reached litellm\.utils\.function_setup.*litellm>=1\.80"):
        BudgetGuard(manager)
    assert litellm.utils.function_setup is bypass  # left as it was


def test_probe_that_fails_otherwise_names_the_failure(monkeypatch, manager) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("litellm_params")

    broken.__budget_guard__ = True  # type: ignore[attr-defined]
    monkeypatch.setattr(litellm.utils, "function_setup", broken)
    monkeypatch.setattr(hooks, "_installed", False)
    with pytest.raises(GuardInstallError, match=r"probe .* failed .* before reaching .*: KeyError: 'litellm_params'"):
        BudgetGuard(manager)


def test_litellm_without_function_setup_is_refused(monkeypatch, manager) -> None:
    monkeypatch.delattr(litellm.utils, "function_setup")
    monkeypatch.setattr(hooks, "_installed", False)
    with pytest.raises(GuardInstallError, match=r"has no litellm\.utils\.function_setup"):
        BudgetGuard(manager)


class CallsSeen(CustomLogger):
    """Records which calls litellm reports to callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.calls.append(str(kwargs.get("litellm_call_id")))

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.calls.append(f"failed {kwargs.get('litellm_call_id')}")


def test_probe_passes_both_hooks_and_is_reported_to_no_callback(monkeypatch, server, manager, register) -> None:
    seen = CallsSeen()
    litellm.callbacks.append(seen)
    monkeypatch.setattr(hooks, "_installed", False)
    monkeypatch.setattr(hooks, "_settles_on_return", False)
    register(BudgetGuard(manager))  # probes again, with a callback there to see it
    assert hooks.settles_on_return()
    response = call(server)
    wait_until(lambda: bool(seen.calls))
    assert seen.calls == [response._hidden_params["litellm_call_id"]]  # this call's event, none of the probe


def test_probe_leaves_the_apps_litellm_cache_empty(monkeypatch, manager) -> None:
    BudgetGuard(manager)  # installed once
    cache = litellm.Cache(type="local")
    monkeypatch.setattr(litellm, "cache", cache)
    monkeypatch.setattr(hooks, "_installed", False)
    BudgetGuard(manager)  # probes again, with a cache there
    assert hooks.settles_on_return()
    assert cache.cache.cache_dict == {}  # type: ignore[union-attr]


def test_update_response_metadata_off_the_path_warns_and_success_events_still_charge(
    monkeypatch, caplog, server, manager, register
) -> None:
    BudgetGuard(manager)  # installed once
    original = litellm.utils.update_response_metadata.__wrapped__  # type: ignore[attr-defined]

    def bypass(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    bypass.__budget_guard__ = True  # type: ignore[attr-defined]  # looks installed, is not
    monkeypatch.setattr(litellm.utils, "update_response_metadata", bypass)
    monkeypatch.setattr(hooks, "_installed", False)
    monkeypatch.setattr(hooks, "_settles_on_return", True)
    with caplog.at_level(logging.WARNING, logger=hooks.__name__):
        register(BudgetGuard(manager))  # starts: sync calls are still checked
    assert not hooks.settles_on_return()
    warnings = [r.getMessage() for r in caplog.records if r.name == hooks.__name__]
    assert len(warnings) == 1 and "update_response_metadata" in warnings[0] and "success events" in warnings[0]
    manager.create_budget(1.0, "alice")
    call(server, user="alice")
    wait_until(lambda: manager.get_current_cost("alice") > 0)  # by litellm's success event
    assert manager.get_current_cost("alice") == pytest.approx(SERVER_COST)


def test_calls_are_told_apart_when_other_code_wraps_function_setup(monkeypatch, server, manager, register) -> None:
    """A wrapper that hides function_setup's signature (no is_async_call default to read), and
    another around the guard's: an async call is still left to the deployment hook (checked
    once), sync ones still checked, also inside a coroutine."""
    BudgetGuard(manager)  # installed once
    real = litellm.utils.function_setup.__wrapped__

    def traced_inside(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **kwargs)

    monkeypatch.setattr(litellm.utils, "function_setup", traced_inside)
    monkeypatch.setattr(hooks, "_installed", False)
    guard = register(BudgetGuard(manager))
    guarded = litellm.utils.function_setup

    def traced_outside(*args: Any, **kwargs: Any) -> Any:
        return guarded(*args, **kwargs)

    monkeypatch.setattr(litellm.utils, "function_setup", traced_outside)
    checked: list[str] = []
    check = guard.check

    def check_noting_call(call_type: str, kwargs: Any, args: Any = ()) -> None:
        checked.append(call_type)
        check(call_type, kwargs, args)

    guard.check = check_noting_call  # type: ignore[method-assign]
    manager.create_budget(1.0, "alice")

    async def one_async() -> None:
        await acall(server, user="alice", max_tokens=100)

    asyncio.run(one_async())
    assert checked == ["acompletion"]  # by the deployment hook only
    manager.create_budget(1e-6, "bob")

    async def sync_inside_a_coroutine() -> None:
        call(server, user="bob", max_tokens=100)

    with pytest.raises(BudgetExceededError):
        call(server, user="bob", max_tokens=100)
    with pytest.raises(BudgetExceededError):
        asyncio.run(sync_inside_a_coroutine())
    assert server.count == 1


def test_async_call_made_as_the_settler_threads_shut_down_is_settled_inline(
    monkeypatch, server, http_store_factory, register
) -> None:
    """At interpreter exit the settlers take no more work: the call is charged in the event
    loop's thread instead, and served all the same."""
    store: BudgetStore = http_store_factory()
    register(BudgetGuard(store))
    shut_down = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    shut_down.shutdown()
    monkeypatch.setattr(hooks, "_settlers", shut_down)

    async def go() -> float:
        await acall(server, user="alice")
        return store.get("alice")["current_cost"]  # type: ignore[index]

    assert asyncio.run(go()) == pytest.approx(SERVER_COST)  # charged before the await returned


# --- function_setup: sync calls stopped before the provider ------------------------------------


def test_sync_call_made_inside_a_coroutine_is_still_checked(server, manager, register) -> None:
    """function_setup tells sync from async calls by its caller (litellm's sync or async wrapper),
    not by the thread running an event loop."""
    manager.create_budget(1e-6, "alice")
    register(BudgetGuard(manager))

    async def go() -> None:
        call(server, user="alice", max_tokens=100)

    with pytest.raises(BudgetExceededError):
        asyncio.run(go())
    assert server.count == 0


def test_async_call_is_held_once(server, manager, register) -> None:
    """An async call is checked in the deployment hook only: a second hold from function_setup
    would not fit in a budget of 1.5 estimates."""
    manager.create_budget(1.5 * estimate(100), "alice")
    register(BudgetGuard(manager))

    async def go() -> None:
        await acall(server, user="alice", max_tokens=100)

    asyncio.run(go())
    assert server.count == 1


# --- update_response_metadata: charged as the call returns -------------------------------------


def test_sync_call_is_charged_when_completion_returns(server, manager, register) -> None:
    register(BudgetGuard(manager))
    manager.create_budget(1.0, "alice")
    call(server, user="alice")
    assert manager.get_current_cost("alice") == pytest.approx(SERVER_COST)  # no waiting
    assert not manager.store.get("alice").get("reservations")  # type: ignore[union-attr]


def test_async_call_is_charged_when_acompletion_returns(server, manager, register) -> None:
    register(BudgetGuard(manager))
    manager.create_budget(1.0, "alice")

    async def go() -> None:
        await acall(server, user="alice")
        assert manager.get_current_cost("alice") == pytest.approx(SERVER_COST)  # no waiting

    asyncio.run(go())
    assert not manager.store.get("alice").get("reservations")  # type: ignore[union-attr]


def test_async_call_on_a_store_that_writes_at_once_is_charged_off_the_event_loop(
    server, http_store_factory, register
) -> None:
    store: BudgetStore = http_store_factory()
    register(BudgetGuard(store))
    loop_thread: list[threading.Thread] = []
    charged_in: list[threading.Thread] = []
    charge = store.charge

    def charge_noting_thread(*args: Any, **kwargs: Any) -> Any:
        charged_in.append(threading.current_thread())
        return charge(*args, **kwargs)

    store.charge = charge_noting_thread  # type: ignore[method-assign]

    async def go() -> None:
        loop_thread.append(threading.current_thread())
        await acall(server, user="alice")

    asyncio.run(go())
    wait_until(lambda: store.get("alice")["current_cost"] > 0)  # type: ignore[index]
    assert store.get("alice")["current_cost"] == pytest.approx(SERVER_COST)  # type: ignore[index]
    assert charged_in and loop_thread[0] not in charged_in


# --- a program that ends its event loop right after its call ------------------------------------

TWO_ASYNC_CALLS = """
import asyncio, os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm_budget_plugin.guard import BudgetGuard

class SuccessEvents(CustomLogger):
    seen = 0
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        SuccessEvents.seen += 1

litellm.callbacks.extend([BudgetGuard(sys.argv[1]), SuccessEvents()])

async def call():
    response = await litellm.acompletion(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="hello", user="alice"
    )
    return response._hidden_params["response_cost"]

async def main():
    first = await call()
    for _ in range(1000):  # the first call's success event comes, and must not charge it again
        if SuccessEvents.seen:
            break
        await asyncio.sleep(0.01)
    second = await call()  # the program ends right after this one
    print(SuccessEvents.seen, first + second)

asyncio.run(main())
"""


def test_asyncio_run_ending_right_after_acompletion_is_charged_once_and_exits_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "two_calls.py"
    script.write_text(TWO_ASYNC_CALLS)
    path = tmp_path / "user_cost.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "RuntimeError" not in out.stderr, out.stderr
    events, cost = out.stdout.split()
    assert events == "1" and float(cost) > 0
    store = FileStore(path)
    try:
        record = store.get("alice")
        assert record is not None
        assert record["current_cost"] == pytest.approx(float(cost))  # both calls, each once
        assert not record.get("reservations")  # no hold left to expire
    finally:
        store.close()
