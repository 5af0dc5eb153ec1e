"""The budget server in a background thread of the test process, on a free loopback port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from litellm_budget_plugin._server_access import Keys
from litellm_budget_plugin.server import ProjectStores, make_app
from litellm_budget_plugin.stores import BudgetStore, FileStore
from litellm_budget_plugin.stores.projects import directory_projects


class ServerClock:
    """The time of every store a test server opens; tests set ``now`` to move it."""

    def __init__(self) -> None:
        self.now: Callable[[], float] | None = None

    def __call__(self) -> float:
        import time

        return time.time() if self.now is None else self.now()


def directory_stores(directory: Path, clock: ServerClock | None = None) -> ProjectStores:
    """One FileStore per project in ``directory``, like ``serve --store DIR``, with a clock."""

    def open_store(project: str) -> BudgetStore:
        store = FileStore(directory / f"{project}.json")
        if clock is not None:
            store.clock = clock
        return store

    def exists(project: str) -> bool:
        return (directory / f"{project}.json").exists() or (directory / f"{project}.json.journal").exists()

    return ProjectStores(
        open_store,
        exists=exists,
        description=f"test directory {directory}",
        listed=lambda: directory_projects(directory),
    )


class ServerThread:
    """``with ServerThread(stores) as server: server.url``; stops gracefully on exit."""

    def __init__(
        self,
        stores: ProjectStores,
        *,
        api_key: str | None = None,
        keys: Keys | None = None,
        max_body: int | None = None,
        read_timeout: float | None = None,
        **options: Any,
    ) -> None:
        self.stores = stores
        self.keys = keys
        self.options = options  # more make_app keywords (observers=, metrics=)
        self.read_timeout = read_timeout
        self.api_key = api_key
        self.max_body = max_body
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="budget-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        kwargs: dict[str, Any] = {} if self.max_body is None else {"max_body": self.max_body}
        kwargs.update(self.options)
        if self.read_timeout is not None:
            kwargs["read_timeout"] = self.read_timeout
        app = make_app(self.stores, api_key=self.api_key, keys=self.keys, **kwargs)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
