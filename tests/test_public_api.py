"""The package root: every public name there, nothing heavy imported until it is used."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import subprocess
import sys

import litellm
import pytest

import litellm_budget_plugin
from litellm_budget_plugin import BudgetExceededError, BudgetPluginError, BudgetRefusal
from litellm_budget_plugin.errors import over_budget

# Public classes left out of the package root, each for a reason: the server's project map,
# the bases a new store is built on, parts of UserRecord, the alert tracker's view of a window.
NOT_IN_ROOT = {"ProjectStores", "RecordStore", "WritesAtOnce", "Reservation", "Window", "WindowView"}
# A report's parts, used through litellm_budget_plugin.reports (aggregate returns them).
NOT_IN_ROOT |= {"BudgetLine", "Period", "Report", "Row"}


def _defined_classes() -> set[str]:
    """The name of every public class the package defines (each public module, walked)."""
    found: set[str] = set()
    for info in pkgutil.walk_packages(litellm_budget_plugin.__path__, "litellm_budget_plugin."):
        if info.name.rpartition(".")[2].startswith("_"):
            continue  # a private module's classes are reached through a public one (stores._journal)
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
                found.add(name)
    return found


def test_all_names_every_public_class_and_function() -> None:
    classes = _defined_classes()
    assert {"BudgetGuard", "GuardInstallError", "BudgetExceededError", "HttpStore", "RedisStore"} <= classes
    expected = (classes - NOT_IN_ROOT) | {"store_from_url", "register_price", "budget_scope", "current_scope"}
    assert sorted(expected - set(litellm_budget_plugin.__all__)) == []
    assert len(set(litellm_budget_plugin.__all__)) == len(litellm_budget_plugin.__all__)


def test_each_name_imports_from_the_root() -> None:
    namespace: dict[str, object] = {}
    exec("from litellm_budget_plugin import *", namespace)
    for name in litellm_budget_plugin.__all__:
        assert namespace[name] is getattr(litellm_budget_plugin, name)
        assert name in dir(litellm_budget_plugin)
    from litellm_budget_plugin.guard import BudgetGuard

    assert litellm_budget_plugin.BudgetGuard is BudgetGuard
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        _ = litellm_budget_plugin.Nonexistent  # type: ignore[attr-defined]


def _fresh_python(code: str) -> str:
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.strip()


def test_importing_the_root_imports_no_litellm_httpx_or_redis() -> None:
    shown = _fresh_python(
        "import sys, litellm_budget_plugin as p\n"
        "heavy = ['litellm', 'httpx', 'redis', 'aiohttp', 'tiktoken']\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "p.RedisStore, p.HttpStore\n"  # a RedisStore needs redis-py only when one is made
        "print([m for m in heavy if m in sys.modules])"
    )
    assert shown.splitlines() == ["[]", "['httpx']"]


def test_a_refusal_without_litellm_is_the_base_class() -> None:
    """The budget server refuses without importing litellm (seconds, under the store's lock)."""
    shown = _fresh_python(
        "import pickle, sys\n"
        "from litellm_budget_plugin.errors import over_budget\n"
        "refusal = over_budget('alice', 1.0, 2.0, 1.5, 0.25)\n"
        "again = pickle.loads(pickle.dumps(refusal))\n"
        "print(type(again).__name__, again.reserved, 'litellm' in sys.modules)"
    )
    assert shown == "BudgetRefusal 0.25 False"


def test_a_refusal_with_litellm_is_litellms_error_type() -> None:
    refusal = over_budget("alice", 1.0, 2.0, 1.5, 0.25)
    assert type(refusal) is BudgetExceededError
    assert isinstance(refusal, litellm.BudgetExceededError) and isinstance(refusal, BudgetRefusal)
    assert not isinstance(refusal, BudgetPluginError)  # "store failed, fail open" never swallows it
    assert (refusal.current_cost, refusal.max_budget, refusal.entity_id) == (1.0, 2.0, "alice")
    assert str(refusal) == refusal.message and "'alice'" in str(refusal) and "$1.500000" in str(refusal)
    again = pickle.loads(pickle.dumps(refusal))
    assert type(again) is BudgetExceededError
    assert (again.user, again.spend, again.budget, again.estimate, again.reserved) == ("alice", 1.0, 2.0, 1.5, 0.25)
    assert str(again) == str(refusal)
    assert BudgetExceededError.__module__ == "litellm_budget_plugin.errors"
