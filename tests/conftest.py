"""Shared fixtures. litellm reads its bundled price map: there is no network here."""

from __future__ import annotations

import contextlib
import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fake_openai import FakeOpenAI
from redis_server import RedisServer

from litellm_budget_plugin.stores import BudgetStore, FileStore

if TYPE_CHECKING:
    from litellm_budget_plugin import BudgetManager
    from litellm_budget_plugin.guard import BudgetGuard

# Every store the contract suite (tests/test_store_contract.py) runs on: the name of a
# fixture that returns a factory making a fresh, empty store. Later stores add theirs.
STORE_FIXTURES = ["file_store_factory"]


@contextlib.contextmanager
def closing_factory(open_store: Callable[[], BudgetStore]) -> Iterator[Callable[[], BudgetStore]]:
    """A factory that calls ``open_store`` and closes every store it made on exit."""
    made: list[BudgetStore] = []

    def make() -> BudgetStore:
        store = open_store()
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            store.close()


@pytest.fixture
def file_store_factory(tmp_path: Path) -> Iterator[Callable[[], BudgetStore]]:
    with closing_factory(lambda: FileStore(tmp_path / "user_cost.json")) as make:
        yield make


@pytest.fixture
def http_store_factory(tmp_path: Path) -> Iterator[Callable[[], BudgetStore]]:
    """HttpStores on a budget server in this process, over FileStores in tmp_path.

    Time is the server's: setting ``clock`` on a store returned here sets the clock of the
    server's stores (a test-only subclass; HttpStore itself has no clock).
    """
    from server_thread import ServerClock, ServerThread, directory_stores

    from litellm_budget_plugin.stores.http import HttpStore

    clock = ServerClock()

    class ClockedHttpStore(HttpStore):
        @property
        def clock(self) -> Callable[[], float]:
            return clock

        @clock.setter
        def clock(self, now: Callable[[], float]) -> None:
            clock.now = now

    with (
        ServerThread(directory_stores(tmp_path, clock)) as server,
        closing_factory(lambda: ClockedHttpStore(server.url, project_name="contract", retries=0)) as make,
    ):
        yield make


STORE_FIXTURES.append("http_store_factory")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (skips, saying how to install it, if there is none)."""
    pytest.importorskip("redis", reason="pip install litellm_budget_plugin[redis]")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis server, emptied."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def redis_store_factory(redis_server: RedisServer) -> Iterator[Callable[[], BudgetStore]]:
    """RedisStores on the session's server, emptied before each test."""
    import redis

    from litellm_budget_plugin.stores.redis import RedisStore

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    with closing_factory(lambda: RedisStore(redis_server.url, project="contract")) as make:
        yield make


STORE_FIXTURES.append("redis_store_factory")


@pytest.hookimpl(tryfirst=True)  # before -m selects on markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store_factory") == "redis_store_factory":
            item.add_marker(pytest.mark.redis)


@pytest.fixture(params=STORE_FIXTURES)
def store_factory(request: pytest.FixtureRequest) -> Callable[[], BudgetStore]:
    """A factory for the store under test; two calls give two handles on the same store."""
    factory: Callable[[], BudgetStore] = request.getfixturevalue(request.param)
    return factory


@pytest.fixture
def store(store_factory: Callable[[], BudgetStore]) -> BudgetStore:
    return store_factory()


# --- BudgetGuard tests ----------------------------------------------------------------------


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[BudgetManager]:
    """A BudgetManager on a FileStore at ``tmp_path / "user_cost.json"``."""
    from litellm_budget_plugin import BudgetManager

    made = BudgetManager("test", store=tmp_path / "user_cost.json")
    yield made
    made.close()


@pytest.fixture
def register() -> Iterator[Callable[[BudgetGuard], BudgetGuard]]:
    """Registers guards as an app would, and unregisters them after the test."""
    import litellm

    added: list[BudgetGuard] = []

    def add(guard: BudgetGuard) -> BudgetGuard:
        litellm.callbacks.append(guard)
        added.append(guard)
        return guard

    yield add
    for guard in added:  # a test that failed leaves no alert sender retrying into later tests
        if guard.alerts is not None:
            guard.alerts.close(timeout=1.0)
    litellm.logging_callback_manager._reset_all_callbacks()
    litellm.max_budget = 0.0
    litellm._current_cost = 0


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A local OpenAI-compatible server that counts the requests it gets."""
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()
