"""Overruns: a call that costs more than was held for it is logged, counted on the guard, and
counted in its user's record by every store, in the same write as its charge.

The local OpenAI-compatible server bills 20 completion tokens whatever ``max_tokens`` says, so
a call with ``max_tokens=1`` costs more than the guard held for it, and one with
``max_tokens=100`` less.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import litellm
import pytest
from click.testing import CliRunner
from fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI
from waiting import wait_until

from litellm_budget_plugin import ConfigurationError, FileStore, HttpStore, Overruns, RedisStore, pricing
from litellm_budget_plugin import budget as budget_module
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.cli import EXIT_OK, _money, main
from litellm_budget_plugin.guard import GLOBAL_USER, BudgetGuard
from litellm_budget_plugin.overruns import LATEST_KEPT, OVERRUN_TOLERANCE, overrun
from litellm_budget_plugin.stores import BudgetStore

MODEL = "openai/gpt-4o-mini"
IN_PRICE, OUT_PRICE = 1.5e-7, 6e-7
SERVER_COST = PROMPT_TOKENS * IN_PRICE + COMPLETION_TOKENS * OUT_PRICE
MESSAGES = [{"role": "user", "content": "hi"}]
GUARD_LOG = "litellm_budget_plugin.guard"


def call(server: FakeOpenAI, **kwargs: Any) -> Any:
    return litellm.completion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


def record_of(store: BudgetStore, user: str) -> UserRecord:
    record = store.get(user)
    assert record is not None
    return record


def show(store: BudgetStore, *args: str) -> str:
    """``litellm-budget show`` on the store the test uses (a file, a budget server, Redis)."""
    if isinstance(store, FileStore):
        where = ["--store", str(store.path)]
    elif isinstance(store, HttpStore):
        where = ["--store", store.api_base, "--project", store.project_name]
    else:
        assert isinstance(store, RedisStore)
        where = ["--store", store.safe_url, "--project", store.project]
    result = CliRunner().invoke(main, ["show", *args, *where], catch_exceptions=False)
    assert result.exit_code == EXIT_OK, result.output
    return result.output


# --- the guard, against every store ----------------------------------------------------------


def test_a_call_over_its_hold_is_logged_counted_and_stored(
    store_factory: Callable[[], BudgetStore], server: FakeOpenAI, register, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory()
    store.set_budget("alice", 1.0)
    store.set_budget("bob", 1.0)
    guard = register(BudgetGuard(store))

    with caplog.at_level(logging.WARNING, logger=GUARD_LOG):
        call(server, user="alice", max_tokens=1)
        wait_until(lambda: guard.overruns.count == 1)
        wait_until(lambda: record_of(store, "alice")["current_cost"] > 0)

    seen = guard.overruns
    assert seen.count == 1 and len(seen.latest) == 1
    (one,) = seen.latest
    assert one.user == "alice" and one.model == "gpt-4o-mini"  # as litellm reports it, and charges it
    assert one.actual == pytest.approx(SERVER_COST) and 0 < one.held < one.actual
    assert seen.excess_cost == pytest.approx(one.actual - one.held) == one.excess
    warnings = [r.getMessage() for r in caplog.records if r.name == GUARD_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    named = (one.call_id, one.model, "'alice'", f"${one.actual:.8f}", f"${one.held:.8f}")
    assert all(part in warnings[0] for part in named), warnings[0]

    record = record_of(store, "alice")
    assert record["current_cost"] == pytest.approx(SERVER_COST)
    assert record.get("overruns") == 1
    assert record.get("overrun_cost") == pytest.approx(one.excess)

    # A call within its hold changes nothing.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=GUARD_LOG):
        call(server, user="bob", max_tokens=100)
        wait_until(lambda: record_of(store, "bob")["current_cost"] > 0)
    assert guard.overruns == seen
    assert not [r for r in caplog.records if r.name == GUARD_LOG]
    assert "overruns" not in record_of(store, "bob") and "overrun_cost" not in record_of(store, "bob")

    table = show(store).splitlines()
    assert table[0].split()[-1] == "OVERRUNS"
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["alice"][-2:] == ["1", f"(+{_money(one.excess)})"]
    assert rows["bob"][-1] == "-"
    shown = json.loads(show(store, "--json"))
    assert shown["alice"]["overruns"] == 1 and shown["alice"]["overrun_cost"] == pytest.approx(one.excess)
    assert "overruns" not in shown["bob"]


def test_show_stays_as_it_was_when_nobody_overran(
    store_factory: Callable[[], BudgetStore], server: FakeOpenAI, register
) -> None:
    store = store_factory()
    store.set_budget("bob", 1.0)
    guard = register(BudgetGuard(store))
    call(server, user="bob", max_tokens=100)
    wait_until(lambda: record_of(store, "bob")["current_cost"] > 0)
    assert guard.overruns == Overruns()
    assert show(store).splitlines()[0].split() == ["USER", "SPENT", "BUDGET", "USED", "NEXT", "RESET"]


# --- the arithmetic, and every store's charge ------------------------------------------------


def test_overrun_is_the_excess_beyond_float_noise() -> None:
    assert overrun(2.0, 1.5) == 0.5
    assert overrun(1.5, 1.5) == 0.0 and overrun(1.0, 1.5) == 0.0
    assert overrun(1.5 * (1 + OVERRUN_TOLERANCE / 2), 1.5) == 0.0  # the same sum, added in another order
    assert overrun(1e-9, 0.0) == 1e-9  # held nothing, cost something
    assert overrun(5.0, None) == 0.0  # no hold: nothing to overrun


def test_the_redis_script_uses_the_same_tolerance() -> None:
    source = resources.files("litellm_budget_plugin.stores").joinpath("redis_budget.lua").read_text()
    found = re.search(r"^local OVERRUN_TOLERANCE = (\S+)$", source, re.MULTILINE)
    assert found is not None and float(found.group(1)) == OVERRUN_TOLERANCE


def test_charges_count_overruns_in_the_record(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0, "daily")
    store.charge("alice", 0.5, "m", call_id="c1", held=0.2)  # over by 0.3
    store.charge("alice", 0.5, "m", call_id="c1", held=0.2)  # the same call again: neither charged nor counted
    record = store.charge("alice", 0.1, "m", call_id="c2", held=0.4)  # within its hold
    assert record["current_cost"] == pytest.approx(0.6)
    assert record.get("overruns") == 1 and record.get("overrun_cost") == pytest.approx(0.3)
    store.charge("alice", 0.25, "m", held=0.25 * (1 + 1e-12))  # float noise: not an overrun
    record = store.charge("alice", 1.0, "m", held=0.5)  # no call id: still counted
    assert record.get("overruns") == 2 and record.get("overrun_cost") == pytest.approx(0.8)
    assert record_of(store, "alice").get("overruns") == 2


def test_charges_without_a_hold_count_nothing(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0)
    record = store.charge("alice", 5.0, "m", call_id="c1")
    assert "overruns" not in record and "overrun_cost" not in record


def test_overruns_outlive_windows_and_resets(store: BudgetStore) -> None:
    now = [1_800_000_000.0]
    store.clock = lambda: now[0]  # type: ignore[attr-defined]
    store.set_budget("alice", 10.0, "daily")
    store.charge("alice", 2.0, "m", call_id="c1", held=1.0)
    now[0] += 2 * 86_400
    rolled = store.roll("alice")
    assert rolled["current_cost"] == 0 and rolled.get("overruns") == 1 and rolled.get("overrun_cost") == 1.0
    store.charge("alice", 2.0, "m", call_id="c2", held=1.5)
    reset = store.reset("alice")
    assert reset["current_cost"] == 0 and reset.get("overruns") == 2 and reset.get("overrun_cost") == 1.5
    assert store.set_budget("alice", 20.0).get("overruns") == 2


def test_settling_a_reservation_counts_its_overrun(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0)
    store.reserve("alice", "c1", 0.2, 60)
    store.reserve("alice", "c2", 0.5, 60)
    assert store.settle("c1", 0.5, "m", user="alice")
    assert store.settle("c2", 0.3, "m")
    record = record_of(store, "alice")
    assert record.get("overruns") == 1 and record.get("overrun_cost") == pytest.approx(0.3)


def test_settling_a_leased_call_counts_its_overrun(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    try:
        store.set_budget("alice", 10.0)
        store.admit("alice", "c1", 0.2, 60)  # held in the process's lease, not under its call id
        assert store.settle("c1", 0.5, "m")
        record = record_of(store, "alice")
        assert record.get("overruns") == 1 and record.get("overrun_cost") == pytest.approx(0.3)
    finally:
        store.close()


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "0.1", True])
def test_a_bad_held_amount_is_refused_and_changes_nothing(store: BudgetStore, bad: object) -> None:
    store.set_budget("alice", 10.0)
    with pytest.raises(ConfigurationError, match="held amount"):
        store.charge("alice", 1.0, "m", call_id="c1", held=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="held amount"):
        store.charge_later("alice", 1.0, "m", call_id="c2", held=bad)  # type: ignore[arg-type]
    record = record_of(store, "alice")
    assert record["current_cost"] == 0 and "overruns" not in record


def test_records_with_overruns_are_written_and_read_back_whole(store: BudgetStore) -> None:
    record = budget_module.new_record(5.0, None, 1_800_000_000.0)
    record["overruns"], record["overrun_cost"] = 3, 0.125
    store.put("alice", record)
    got = record_of(store, "alice")
    assert got.get("overruns") == 3 and isinstance(got.get("overruns"), int) and got.get("overrun_cost") == 0.125


@pytest.mark.parametrize(
    ("field", "bad", "problem"),
    [
        ("overruns", -1, "overruns"),
        ("overruns", 1.5, "overruns"),
        ("overruns", True, "overruns"),
        ("overruns", "3", "overruns"),
        ("overrun_cost", -0.5, "overrun_cost"),
        ("overrun_cost", math.nan, "overrun_cost"),
        ("overrun_cost", "0.5", "overrun_cost"),
    ],
)
def test_records_with_bad_overrun_fields_are_refused(field: str, bad: object, problem: str) -> None:
    raw = {"total_budget": 1.0, "current_cost": 0.0, field: bad}
    with pytest.raises(ConfigurationError, match=f"user 'alice'.*{problem}"):
        budget_module.check_record("alice", raw)


# --- the file store's deferred charges ---------------------------------------------------------


def test_deferred_charges_written_together_count_each_overrun_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    try:
        store.set_budget("alice", 10.0)
        store.set_budget("bob", 10.0)
        store.charge_later("alice", 0.5, "m", call_id="c1", held=0.2)  # over by 0.3
        store.charge_later("alice", 0.5, "m", call_id="c1", held=0.2)  # repeated: once
        store.charge_later("bob", 0.4, "m", call_id="c2", held=0.1)  # over by 0.3
        store.charge_later("alice", 0.1, "m", call_id="c3", held=0.3)  # within
        store.charge_later("alice", 0.7, "m", call_id="c4", held=0.6)  # over by 0.1
        records = store.all()  # applies whatever the flusher has not, under one lock
    finally:
        store.close()
    alice, bob = records["alice"], records["bob"]
    assert alice["current_cost"] == pytest.approx(1.3) and bob["current_cost"] == pytest.approx(0.4)
    assert alice.get("overruns") == 2 and alice.get("overrun_cost") == pytest.approx(0.4)
    assert bob.get("overruns") == 1 and bob.get("overrun_cost") == pytest.approx(0.3)
    reopened = FileStore(tmp_path / "user_cost.json")  # and so they were written
    try:
        assert record_of(reopened, "alice").get("overruns") == 2
    finally:
        reopened.close()


def test_a_guard_on_a_file_store_counts_each_of_many_calls_once(tmp_path: Path, server: FakeOpenAI, register) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    store.set_budget("alice", 1.0)
    guard = register(BudgetGuard(store))
    for _ in range(3):
        call(server, user="alice", max_tokens=1)
    call(server, user="alice", max_tokens=100)
    wait_until(lambda: record_of(store, "alice")["current_cost"] >= 4 * SERVER_COST * (1 - 1e-9))
    record = record_of(store, "alice")
    assert guard.overruns.count == 3 == record.get("overruns")
    assert record.get("overrun_cost") == pytest.approx(guard.overruns.excess_cost)
    store.close()


# --- global budgets -------------------------------------------------------------------------


def test_calls_held_only_against_litellm_max_budget_count_on_the_guard(
    tmp_path: Path, server: FakeOpenAI, register
) -> None:
    guard = register(BudgetGuard(tmp_path / "user_cost.json"))
    litellm.max_budget = 1.0
    call(server, max_tokens=1)  # no user: held against this process's budget alone
    wait_until(lambda: guard.overruns.count == 1)
    assert guard.overruns.latest[0].user is None


def test_a_store_wide_global_budget_counts_overruns_in_its_record(tmp_path: Path, server: FakeOpenAI, register) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    guard = register(BudgetGuard(store, global_budget="store"))
    litellm.max_budget = 1.0
    call(server, user="alice", max_tokens=1)  # held for alice (tracked) and for the global budget
    wait_until(lambda: record_of(store, "alice")["current_cost"] > 0)
    assert guard.overruns.count == 1 and guard.overruns.latest[0].user == "alice"
    assert record_of(store, GLOBAL_USER).get("overruns") == 1
    assert record_of(store, "alice").get("overruns") == 1
    store.close()


def test_a_capped_call_holds_one_amount_in_every_budget_and_overruns_it_in_each(
    tmp_path: Path, server: FakeOpenAI, register
) -> None:
    """With cap_output the store-wide global budget leaves less than the user's: one admission
    holds that smaller amount in both and caps the call to it, so costing more than it is the
    call's overrun, counted once on the guard and in each record that held it."""
    store = FileStore(tmp_path / "user_cost.json")
    store.set_budget("alice", 1.0)
    guard = register(BudgetGuard(store, global_budget="store", cap_output=True, min_output_tokens=1))
    prompt_cost = pricing.worst_case("completion", MODEL, {"messages": MESSAGES}).prompt_cost
    litellm.max_budget = prompt_cost + 5 * OUT_PRICE  # pays for 5 output tokens; the server bills 20
    call(server, user="alice")
    assert server.requests[-1]["body"]["max_tokens"] in (4, 5)
    wait_until(lambda: record_of(store, "alice")["current_cost"] > 0)
    wait_until(lambda: guard.overruns.count == 1)
    (one,) = guard.overruns.latest
    assert one.user == "alice" and one.held == pytest.approx(litellm.max_budget)
    assert one.actual == pytest.approx(SERVER_COST)
    assert record_of(store, GLOBAL_USER).get("overruns") == 1
    assert record_of(store, GLOBAL_USER).get("overrun_cost") == pytest.approx(one.excess)
    assert record_of(store, "alice").get("overruns") == 1
    assert record_of(store, "alice").get("overrun_cost") == pytest.approx(one.excess)
    store.close()


# --- the guard's counter ----------------------------------------------------------------------


def test_the_guard_keeps_the_latest_few(tmp_path: Path, server: FakeOpenAI, register) -> None:
    guard = register(BudgetGuard(tmp_path / "user_cost.json"))
    calls = LATEST_KEPT + 2
    for _ in range(calls):
        call(server, user="alice", max_tokens=1)
    wait_until(lambda: guard.overruns.count == calls)
    seen = guard.overruns
    assert len(seen.latest) == LATEST_KEPT
    assert seen.excess_cost == pytest.approx(calls * seen.latest[-1].excess)
    with pytest.raises(AttributeError):
        seen.count = 0  # type: ignore[misc]  # a snapshot: the guard's count is not changed through it


def test_overruns_of_concurrent_calls_are_all_counted(tmp_path: Path, server: FakeOpenAI, register) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    store.set_budget("alice", 1.0)
    guard = register(BudgetGuard(store))
    threads, each = 6, 3
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(each):
                call(server, user="alice", max_tokens=1)
        except BaseException as exc:
            errors.append(exc)

    running = [threading.Thread(target=calls) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=60)
    assert not errors and not any(thread.is_alive() for thread in running)
    wait_until(lambda: guard.overruns.count == threads * each)
    wait_until(lambda: record_of(store, "alice").get("overruns") == threads * each)
    assert record_of(store, "alice").get("overrun_cost") == pytest.approx(guard.overruns.excess_cost)
    store.close()


# --- LiteLLM's own BudgetManager reads the file -----------------------------------------------


def test_litellm_budget_manager_reads_a_file_with_overruns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = FileStore(tmp_path / "user_cost.json")
    store.set_budget("alice", 10.0)
    store.charge("alice", 0.5, "m", call_id="c1", held=0.2)
    store.compact()
    store.close()
    theirs = litellm.BudgetManager(project_name="test")
    assert theirs.get_current_cost("alice") == 0.5
    assert theirs.user_dict["alice"]["overruns"] == 1
