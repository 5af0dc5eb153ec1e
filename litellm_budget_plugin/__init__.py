"""Budgets for litellm calls, per user, team, tag and model: enforced before the call, charged
after, shared safely.

``from litellm_budget_plugin import BudgetGuard`` is all an app needs. Importing the package
does not import litellm (seconds) or a store's client library: the names that need them are
loaded on first use (PEP 562), so the ``litellm-budget`` command starts at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .budget import UserRecord
from .errors import (
    BudgetPluginError,
    BudgetRefusal,
    ConfigurationError,
    StoreCorruptError,
    StoreError,
    StoreLockTimeout,
    StoreUnavailableError,
    UnknownModelError,
    UnknownUserError,
    UnpricedModelError,
)
from .ledger import LedgerEntry, LedgerTotal, Usage
from .stores import STORE_ENV, BudgetStore, FileStore, NewBudget, store_from_url

if TYPE_CHECKING:
    from .alert_events import AlertTracker
    from .alerts import AlertSettings, WebhookAlerts, verify_signature
    from .errors import BudgetExceededError
    from .guard import BudgetGuard, GuardInstallError
    from .manager import BudgetManager
    from .metrics import BudgetMetrics
    from .observe import BudgetObserver, Observers
    from .overruns import Overrun, Overruns
    from .pricing import OutputLimit, WorstCase, register_price
    from .scope import BudgetScope, budget_scope, current_scope
    from .stores.http import HttpStore
    from .stores.redis import RedisStore

# Names loaded on first use, and the module (relative to this package) that defines each.
_LAZY = {
    "AlertSettings": ".alerts",
    "AlertTracker": ".alert_events",
    "WebhookAlerts": ".alerts",
    "verify_signature": ".alerts",  # for webhook receivers
    "BudgetExceededError": ".errors",  # litellm
    "BudgetGuard": ".guard",  # litellm
    "GuardInstallError": ".guard",
    "BudgetManager": ".manager",  # litellm, for pricing
    "BudgetMetrics": ".metrics",  # prometheus_client (the [metrics] extra) when one is made
    "BudgetObserver": ".observe",
    "Observers": ".observe",
    "Overrun": ".overruns",
    "Overruns": ".overruns",
    "OutputLimit": ".pricing",  # litellm
    "WorstCase": ".pricing",  # litellm
    "register_price": ".pricing",  # litellm
    "BudgetScope": ".scope",
    "budget_scope": ".scope",
    "current_scope": ".scope",
    "HttpStore": ".stores.http",  # httpx
    "RedisStore": ".stores.redis",  # redis-py, an optional extra, imported when a RedisStore is made
}

__all__ = [
    "STORE_ENV",
    "AlertSettings",
    "AlertTracker",
    "BudgetExceededError",
    "BudgetGuard",
    "BudgetManager",
    "BudgetMetrics",
    "BudgetObserver",
    "BudgetPluginError",
    "BudgetRefusal",
    "BudgetScope",
    "BudgetStore",
    "ConfigurationError",
    "FileStore",
    "GuardInstallError",
    "HttpStore",
    "LedgerEntry",
    "LedgerTotal",
    "NewBudget",
    "Observers",
    "OutputLimit",
    "Overrun",
    "Overruns",
    "RedisStore",
    "StoreCorruptError",
    "StoreError",
    "StoreLockTimeout",
    "StoreUnavailableError",
    "UnknownModelError",
    "UnknownUserError",
    "UnpricedModelError",
    "Usage",
    "UserRecord",
    "WebhookAlerts",
    "WorstCase",
    "budget_scope",
    "current_scope",
    "register_price",
    "store_from_url",
    "verify_signature",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
