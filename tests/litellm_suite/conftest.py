"""Offline setup for LiteLLM's own BudgetManager tests, run on ours (see each module's docstring).

Every test runs in a fresh temporary folder (LiteLLM's tests write ``user_cost.json`` in the
working directory), and OpenAI calls go to the local server of ``tests/fake_openai.py``
through ``OPENAI_API_BASE``, so the tests' own ``completion(...)`` lines stay as written.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import litellm
import pytest
from fake_openai import FakeOpenAI
from server_thread import ServerThread, directory_stores

from litellm_budget_plugin import BudgetManager
from litellm_budget_plugin.stores import STORE_ENV


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def offline_in_a_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV, raising=False)
    monkeypatch.setenv("OPENAI_API_BASE", fake_openai.url)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")


@pytest.fixture(scope="module", params=["local", "hosted"])
def scenario_budget_manager(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BudgetManager]:
    """One manager for a module's scenarios, which share it: on ``user_cost.json`` in a
    folder of its own, or on a budget server (``client_type="hosted"``) over such a folder."""
    folder = tmp_path_factory.mktemp(f"scenarios-{request.param}")
    if request.param == "local":
        manager = BudgetManager(project_name="test_project", store=folder / "user_cost.json")
        yield manager
        manager.close()
        return
    with ServerThread(directory_stores(folder)) as server:
        manager = BudgetManager(project_name="test_project", client_type="hosted", api_base=server.url)
        yield manager
        manager.close()


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A module that sets ``litellm.set_verbose = True`` when imported keeps it to itself:
    it is imported when collected, before any test of the session runs."""
    verbose = litellm.set_verbose
    try:
        return (yield)
    finally:
        litellm.set_verbose = verbose
