"""Which store holds each project: the budget server's mapping from project names to stores.

A directory holds one ``<project>.json`` file store per project, a URL (``redis://``,
``http://``) is opened once per project with ``project=``, and a single JSON file holds
one named project. Project names are checked before they touch a path.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from . import store_from_url
from .base import BudgetStore
from .file import FileStore

logger = logging.getLogger(__name__)

_PROJECT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

__all__ = ["ProjectStores", "check_project_name"]


def check_project_name(name: object) -> str:
    """A project name that is safe as a file name: [A-Za-z0-9._-], no leading dot, <= 128."""
    if not isinstance(name, str):
        raise ConfigurationError(f"project_name must be a string, got {type(name).__name__}")
    if not _PROJECT_NAME.fullmatch(name):
        raise ConfigurationError(
            f"invalid project_name {name[:200]!r}: use 1-128 characters of A-Z a-z 0-9 . _ -, not starting with a dot"
        )
    return name


def directory_projects(directory: Path) -> list[str]:
    """The projects of a directory of ``<project>.json`` stores (a journal without a snapshot counts)."""
    found = set()
    with os.scandir(directory) as entries:
        for item in entries:
            name = item.name.removesuffix(".journal")
            if name.endswith(".json") and _PROJECT_NAME.fullmatch(name[:-5]):
                found.add(name[:-5])
    return sorted(found)


class ProjectStores:
    """The store of each project, opened on first use and kept open.

    :param open_store: makes the store of a (validated) project name.
    :param exists: whether a project already has data; reads of a project that does not
        exist answer "empty" without creating it. None: every project exists.
    :param only: serve this one project; others are unknown.
    :param listed: the projects that have data (a directory's ``<name>.json`` files), for
        :meth:`names`; None: only the projects opened since start are known.
    """

    def __init__(
        self,
        open_store: Callable[[str], BudgetStore],
        *,
        exists: Callable[[str], bool] | None = None,
        only: str | None = None,
        description: str = "custom stores",
        listed: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._open_store = open_store
        self._exists = exists
        self._listed = listed
        self.only = None if only is None else check_project_name(only)
        self.description = description
        self._stores: dict[str, BudgetStore] = {}
        self._lock = threading.Lock()
        self._replace_locks: dict[str, threading.Lock] = {}

    @classmethod
    def from_target(
        cls, target: str, *, project: str | None = None, ledger_retention_days: float | None = None
    ) -> ProjectStores:
        """Stores for ``--store``: a directory holds one ``<project>.json`` per project; a
        URL (``redis://``, ``http://``) is opened with ``project=`` for each project; a single
        ``.json`` file holds one project and needs its name (``project``). File and Redis stores
        keep ``ledger_retention_days`` of ledger (None: their default).
        """
        options: dict[str, Any] = (
            {} if ledger_retention_days is None else {"ledger_retention_days": ledger_retention_days}
        )
        scheme, sep, rest = target.partition("://")
        if options and scheme.lower() in ("http", "https"):
            raise ConfigurationError("--ledger-days: a budget server's ledger is kept by that server's stores")
        if sep and scheme.lower() != "file":
            return cls(
                lambda name: store_from_url(target, project=name, **options),
                only=project,
                description=f"{target} (project= per project)",
            )
        path = Path(rest if sep else target).absolute()
        if path.is_dir():
            directory = path

            def exists(name: str) -> bool:
                snapshot = directory / f"{name}.json"
                # a link counts (lexists): opening it refuses it, rather than serving "empty"
                return any(os.path.lexists(f"{snapshot}{suffix}") for suffix in ("", ".journal", ".lock"))

            return cls(
                lambda name: FileStore(directory / f"{name}.json", **options),
                exists=exists,
                listed=lambda: directory_projects(directory),
                only=project,
                description=f"directory {str(directory)!r}, one <project>.json per project",
            )
        if path.suffix == ".json" or path.is_file():
            if project is None:
                raise ConfigurationError(
                    f"store {str(path)!r} is one file, which holds one project: name it with "
                    "--project NAME, or serve a directory (one <project>.json per project)"
                )
            FileStore(path, **options).close()  # check the path now, not at the first request
            return cls(
                lambda _name: FileStore(path, **options),
                only=project,
                description=f"file {str(path)!r}, project {project!r} only",
            )
        raise ConfigurationError(f"store directory {str(path)!r} does not exist")

    def get(self, project: str, *, create: bool) -> BudgetStore | None:
        """The project's store; None for a project with no data when ``create`` is false."""
        if self.only is not None and project != self.only:
            raise ConfigurationError(f"unknown project {project!r}: this server serves project {self.only!r} only")
        with self._lock:
            store = self._stores.get(project)
            if store is None:
                if not create and self._exists is not None and not self._exists(project):
                    return None
                store = self._stores[project] = self._open_store(project)
            return store

    def names(self) -> list[str]:
        """The projects known to have data, sorted: the one served (``only``), else those
        opened since start and those listed (a directory's ``<name>.json`` files; a Redis or
        HTTP store lists none of its own)."""
        if self.only is not None:
            return [self.only]
        with self._lock:
            names = set(self._stores)
        if self._listed is not None:
            names.update(self._listed())
        return sorted(names)

    def replace_lock(self, project: str) -> threading.Lock:
        """Serializes whole-dict replaces (/set_budget) of one project on this server."""
        with self._lock:
            return self._replace_locks.setdefault(project, threading.Lock())

    def close(self) -> None:
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            try:
                store.close()
            except Exception:
                logger.warning("closing %r failed", store, exc_info=True)
