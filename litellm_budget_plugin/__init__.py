"""Per-user budgets for litellm calls: enforced before the call, charged after, shared safely."""

from .budget import UserRecord
from .errors import (
    BudgetExceededError,
    BudgetPluginError,
    ConfigurationError,
    StoreCorruptError,
    StoreError,
    StoreLockTimeout,
    StoreUnavailableError,
    UnknownModelError,
    UnknownUserError,
)
from .manager import BudgetManager
from .pricing import register_price
from .stores import BudgetStore, FileStore, store_from_url

__all__ = [
    "BudgetExceededError",
    "BudgetManager",
    "BudgetPluginError",
    "BudgetStore",
    "ConfigurationError",
    "FileStore",
    "StoreCorruptError",
    "StoreError",
    "StoreLockTimeout",
    "StoreUnavailableError",
    "UnknownModelError",
    "UnknownUserError",
    "UserRecord",
    "register_price",
    "store_from_url",
]
