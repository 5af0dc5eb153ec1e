"""Stores, and the one mapping from a path or URL to a store."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError
from .base import BudgetStore, NewBudget, RecordStore
from .file import FileStore

STORE_ENV = "LITELLM_BUDGET_STORE"
DEFAULT_STORE = "user_cost.json"

__all__ = ["STORE_ENV", "BudgetStore", "FileStore", "NewBudget", "RecordStore", "store_from_url"]


def store_from_url(target: str | os.PathLike[str] | BudgetStore | None = None, **options: Any) -> BudgetStore:
    """A store from a path, a URL or a store object.

    None means ``$LITELLM_BUDGET_STORE``, else ``user_cost.json`` in the working directory.
    ``file://`` and plain paths are JSON files; other schemes are added by their extras.
    """
    if target is None:
        target = os.environ.get(STORE_ENV) or DEFAULT_STORE
    if isinstance(target, BudgetStore):
        return target
    if not isinstance(target, str | os.PathLike):
        raise ConfigurationError(f"store must be a path, a URL or a store, got {type(target).__name__}")
    text = os.fspath(target)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return FileStore(text, **options)
    scheme = scheme.lower()
    if scheme == "file":
        return FileStore(rest, **options)
    if scheme in ("http", "https"):
        from .http import DEFAULT_PROJECT, HttpStore

        return HttpStore(text, options.pop("project", None) or DEFAULT_PROJECT, **options)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore  # redis-py is an optional extra: import it only now

        return RedisStore(text, **options)
    raise ConfigurationError(
        f"unknown store scheme {scheme!r} in {text!r}: use a file path, file://, http(s):// or redis(s)://"
    )
