"""Prometheus metrics (metrics.py): a guard's counters after real litellm calls, the per-budget
gauges read from the store and their cardinality bound, the exporter's endpoint, and the budget
server's ``GET /metrics``. Every figure is read back from the text format, as Prometheus does."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import litellm
import pytest
from server_thread import ServerThread, directory_stores
from waiting import wait_until

pytest.importorskip("prometheus_client", reason='pip install "litellm_budget_plugin[metrics]"')

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from litellm_budget_plugin import (
    BudgetExceededError,
    BudgetManager,
    BudgetMetrics,
    BudgetRefusal,
    ConfigurationError,
    FileStore,
    StoreLockTimeout,
)
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.metrics import OTHER
from litellm_budget_plugin.server import ProjectStores
from litellm_budget_plugin.stores.http import HttpStore

MESSAGES = [{"role": "user", "content": "hi"}]
KEY = "metrics-key"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parsed(text: bytes | str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def scrape(metrics: BudgetMetrics) -> Samples:
    return parsed(metrics.exposition())


def mock_call(user: str, **kwargs: object) -> object:
    return litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hello", user=user, **kwargs)


# --- a guard's metrics ----------------------------------------------------------------------


def test_guard_counters_and_gauges_match_the_store(manager: BudgetManager, register: Callable) -> None:
    manager.create_budget(1.0, "alice")
    manager.create_budget(1e-9, "bob")
    manager.create_budget(1e-9, "tag:search")
    metrics = BudgetMetrics(manager.store)
    register(BudgetGuard(manager, observers=[metrics]))

    for _ in range(2):
        mock_call("alice", metadata={"team": "red"})
    with pytest.raises(BudgetExceededError):
        mock_call("bob", max_tokens=100)
    with pytest.raises(BudgetExceededError):
        mock_call("alice", max_tokens=100, metadata={"tags": ["search"]})  # the tag refuses
    store = manager.store
    wait_until(lambda: (value(scrape(metrics), "litellm_budget_charged_usd_total", kind="team") or 0) > 0)
    wait_until(lambda: store.get("team:red") is not None and store.get("team:red")["current_cost"] > 0)  # type: ignore[index]

    samples = scrape(metrics)
    alice, team = store.get("alice"), store.get("team:red")
    assert alice is not None and team is not None
    spent = alice["current_cost"]
    assert spent > 0 and team["current_cost"] == pytest.approx(spent)
    assert value(samples, "litellm_budget_calls_admitted_total") == 2
    assert value(samples, "litellm_budget_calls_refused_total", kind="user") == 1
    assert value(samples, "litellm_budget_calls_refused_total", kind="tag") == 1
    assert value(samples, "litellm_budget_charged_usd_total", kind="user") == pytest.approx(spent)
    assert value(samples, "litellm_budget_charged_usd_total", kind="team") == pytest.approx(spent)
    assert value(samples, "litellm_budget_spend_usd", subject="alice", kind="user") == pytest.approx(spent)
    assert value(samples, "litellm_budget_limit_usd", subject="alice", kind="user") == 1.0
    assert value(samples, "litellm_budget_remaining_usd", subject="alice", kind="user") == pytest.approx(1.0 - spent)
    assert value(samples, "litellm_budget_spend_usd", subject="team:red", kind="team") == pytest.approx(spent)
    assert value(samples, "litellm_budget_limit_usd", subject="team:red", kind="team") is None  # tracked, no limit
    assert value(samples, "litellm_budget_remaining_usd", subject="bob", kind="user") == 1e-9
    assert value(samples, "litellm_budget_subjects", kind="user") == 2
    assert value(samples, "litellm_budget_subjects", kind="team") == 1
    assert value(samples, "litellm_budget_subjects", kind="tag") == 1
    # two admissions timed (a refusal raises out of the store's operation), no store errors
    assert value(samples, "litellm_budget_store_operation_seconds_count", operation="admit") == 2
    assert series(samples, "litellm_budget_store_errors_total") == {}
    assert value(samples, "litellm_budget_overruns_total") == 0


def test_overruns_are_counted_as_the_guard_counts_them(manager: BudgetManager, register: Callable) -> None:
    metrics = BudgetMetrics(manager.store)
    guard = register(BudgetGuard(manager, output_token_cap=1, observers=[metrics]))  # an assumption, overrun
    litellm.completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="a reply of many more tokens than one", user="alice"
    )
    wait_until(lambda: guard.overruns.count == 1)
    samples = scrape(metrics)
    assert value(samples, "litellm_budget_overruns_total") == 1
    assert value(samples, "litellm_budget_overrun_usd_total") == pytest.approx(guard.overruns.excess_cost)
    assert guard.overruns.excess_cost > 0


def test_store_failures_are_counted_by_operation(
    manager: BudgetManager, register: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = BudgetMetrics(manager.store)
    register(BudgetGuard(manager, on_store_error="open", observers=[metrics]))

    def unusable(*args: object, **kwargs: object) -> float:
        raise StoreLockTimeout("the store is busy")

    monkeypatch.setattr(manager.store, "admit", unusable)
    mock_call("alice")  # let through untracked by the store
    samples = scrape(metrics)
    assert value(samples, "litellm_budget_store_errors_total", operation="admit") == 1
    assert value(samples, "litellm_budget_calls_admitted_total") == 0


def test_the_store_is_read_at_scrape_time_not_on_the_call_path(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    try:
        metrics = BudgetMetrics(store)
        assert series(scrape(metrics), "litellm_budget_spend_usd") == {}
        store.set_budget("carol", 2.0)
        store.charge("carol", 0.5, "gpt-4o-mini")  # not through any guard
        samples = scrape(metrics)
        assert value(samples, "litellm_budget_spend_usd", subject="carol", kind="user") == 0.5
        assert value(samples, "litellm_budget_remaining_usd", subject="carol", kind="user") == 1.5
        store.charge("carol", 3.0, "gpt-4o-mini")  # past its limit: nothing remains, never below 0
        assert value(scrape(metrics), "litellm_budget_remaining_usd", subject="carol", kind="user") == 0.0
    finally:
        store.close()


def test_at_most_max_subjects_series_the_rest_summed_per_kind(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    try:
        for n in range(1, 46):  # users u01..u45 spend $1..$45 of $100 each
            store.set_budget(f"u{n:02}", 100.0)
            store.charge(f"u{n:02}", float(n), "gpt-4o-mini")
        for n in range(5):  # five teams spend $0.50 each, without a limit
            store.set_budget(f"team:t{n}", None)
            store.charge(f"team:t{n}", 0.5, "gpt-4o-mini")
        samples = scrape(BudgetMetrics(store, max_subjects=10))
    finally:
        store.close()
    spend = series(samples, "litellm_budget_spend_usd")
    named = {dict(labels)["subject"]: v for labels, v in spend.items() if dict(labels)["subject"] != OTHER}
    assert named == {f"u{n:02}": float(n) for n in range(36, 46)}  # the ten that spent most
    assert len(spend) == 12  # and one __other__ per kind
    assert value(samples, "litellm_budget_spend_usd", subject=OTHER, kind="user") == sum(range(1, 36))
    assert value(samples, "litellm_budget_spend_usd", subject=OTHER, kind="team") == 2.5
    assert value(samples, "litellm_budget_limit_usd", subject=OTHER, kind="user") == 35 * 100.0
    assert value(samples, "litellm_budget_remaining_usd", subject=OTHER, kind="user") == sum(
        100 - n for n in range(1, 36)
    )
    assert value(samples, "litellm_budget_limit_usd", subject=OTHER, kind="team") is None  # none of them has one
    assert value(samples, "litellm_budget_subjects", kind="user") == 45
    assert value(samples, "litellm_budget_subjects", kind="team") == 5
    # sums over every series are what they would be without the bound
    assert sum(spend.values()) == sum(range(1, 46)) + 2.5


def test_the_exporter_serves_its_registry_over_http(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "user_cost.json")
    metrics = BudgetMetrics(store)
    server = metrics.serve(port=0)
    try:
        store.set_budget("dave", 3.0)
        answer = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
        assert answer.status_code == 200
        samples = parsed(answer.text)
        assert value(samples, "litellm_budget_limit_usd", subject="dave", kind="user") == 3.0
        assert value(samples, "litellm_budget_calls_admitted_total") == 0
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def test_own_registry_unless_asked_so_two_coexist(tmp_path: Path) -> None:
    first, second = BudgetMetrics(), BudgetMetrics()  # the same names twice: no clash
    assert first.registry is not second.registry is not REGISTRY
    assert b"litellm_budget_calls_admitted_total" not in generate_latest(REGISTRY)
    assert value(parsed(generate_latest(first.registry)), "litellm_budget_calls_admitted_total") == 0


def test_bad_arguments_and_a_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_subjects"):
        BudgetMetrics(max_subjects=-1)
    stores = directory_stores(tmp_path)
    store = FileStore(tmp_path / "x.json")
    with pytest.raises(ConfigurationError, match="not both"):
        BudgetMetrics(store, projects=stores)
    store.close()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"litellm_budget_plugin\[metrics\]"):
        BudgetMetrics()


# --- the budget server's GET /metrics ---------------------------------------------------------


def test_server_metrics_need_the_key_and_follow_http_store_charges(tmp_path: Path) -> None:
    with ServerThread(directory_stores(tmp_path), api_key=KEY, metrics=True) as server:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        p = HttpStore(server.url, project_name="p", api_key=KEY, retries=0)  # a retry would count twice
        q = HttpStore(server.url, project_name="q", api_key=KEY, retries=0)
        try:
            p.set_budget("alice", 1.0)
            p.reserve("alice", "call-1", 0.1, 60.0, model="gpt-4o-mini")
            p.charge("alice", 0.25, "gpt-4o-mini", "call-1")
            with pytest.raises(BudgetRefusal):
                p.reserve("alice", "call-2", 5.0, 60.0, model="gpt-4o-mini")
            q.set_budget("team:blue", 2.0)
            q.charge("team:blue", 0.5, "gpt-4o-mini")
        finally:
            p.close()
            q.close()
        answer = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = parsed(answer.text)
    assert value(samples, "litellm_budget_calls_admitted_total", project="p") == 1
    assert value(samples, "litellm_budget_calls_refused_total", project="p", kind="user") == 1
    assert value(samples, "litellm_budget_charged_usd_total", project="p", kind="user") == 0.25
    assert value(samples, "litellm_budget_charged_usd_total", project="q", kind="team") == 0.5
    assert value(samples, "litellm_budget_spend_usd", project="p", subject="alice", kind="user") == 0.25
    assert value(samples, "litellm_budget_remaining_usd", project="p", subject="alice", kind="user") == 0.75
    assert value(samples, "litellm_budget_spend_usd", project="q", subject="team:blue", kind="team") == 0.5
    assert value(samples, "litellm_budget_store_operation_seconds_count", project="p", operation="reserve") == 2
    assert value(samples, "litellm_budget_store_operation_seconds_count", project="p", operation="charge") == 1


def test_server_metrics_cover_projects_on_disk_and_filter_by_project(tmp_path: Path) -> None:
    for project, user in (("p", "alice"), ("q", "bob")):
        store = FileStore(tmp_path / f"{project}.json")
        store.set_budget(user, 1.0)
        store.close()
    stores = ProjectStores.from_target(str(tmp_path))
    metrics = BudgetMetrics(projects=stores)
    try:
        metrics.store_timed("p", "get", 0.001)
        metrics.store_timed("q", "get", 0.001)
        everything = parsed(metrics.exposition())
        assert value(everything, "litellm_budget_limit_usd", project="p", subject="alice", kind="user") == 1.0
        assert value(everything, "litellm_budget_limit_usd", project="q", subject="bob", kind="user") == 1.0
        only_p = parsed(metrics.exposition({"p"}))
        assert {dict(labels)["project"] for (_name, labels) in only_p} == {"p"}
        assert value(only_p, "litellm_budget_store_operation_seconds_count", project="p", operation="get") == 1
    finally:
        stores.close()


def test_project_stores_list_a_directory(tmp_path: Path) -> None:
    for name in ("a", "b"):
        store = FileStore(tmp_path / f"{name}.json")
        store.set_budget("u", 1.0)
        store.close()
    (tmp_path / ".hidden.json").write_text("{}")  # not a project name
    stores = ProjectStores.from_target(str(tmp_path))
    assert stores.names() == ["a", "b"]
    assert stores.get("c", create=True) is not None  # opened since start: known before its first write
    assert stores.names() == ["a", "b", "c"]
    stores.close()
    assert ProjectStores.from_target(str(tmp_path), project="a").names() == ["a"]


def test_serve_has_a_metrics_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from litellm_budget_plugin import cli, server

    given: dict[str, object] = {}
    monkeypatch.setattr(server, "run", lambda stores, **options: given.update(options))
    result = CliRunner().invoke(cli.main, ["serve", "--store", str(tmp_path), "--metrics"])
    assert result.exit_code == 0, result.output
    assert given["metrics"] is True
    given.clear()
    assert CliRunner().invoke(cli.main, ["serve", "--store", str(tmp_path)]).exit_code == 0
    assert "host" in given and "metrics" not in given  # off unless asked


def test_server_observers_hear_of_store_failures(tmp_path: Path) -> None:
    from litellm_budget_plugin import StoreUnavailableError

    def failing_store(project: str) -> FileStore:
        store = FileStore(tmp_path / f"{project}.json")

        def charge(*args: object, **kwargs: object) -> object:
            raise StoreUnavailableError("the disk went away")

        store.charge = charge  # type: ignore[method-assign]
        return store

    stores = ProjectStores(failing_store, description="a store whose charges fail")
    watcher = BudgetMetrics(projects=stores)  # given as a plain observer, as an alert would be
    with ServerThread(stores, observers=[watcher]) as server:
        client = HttpStore(server.url, project_name="p", retries=0)
        try:
            client.set_budget("alice", 1.0)
            with pytest.raises(StoreUnavailableError):
                client.charge("alice", 0.25, "gpt-4o-mini", "call-1")
        finally:
            client.close()
        assert httpx.get(f"{server.url}/metrics").status_code == 404  # metrics=True serves them
    samples = parsed(watcher.exposition())
    assert value(samples, "litellm_budget_store_errors_total", project="p", operation="charge") == 1
    assert value(samples, "litellm_budget_charged_usd_total", project="p", kind="user") is None
    assert value(samples, "litellm_budget_store_operation_seconds_count", project="p", operation="set_budget") == 1
