"""Apps test "the budget resets tomorrow" by patching the clock: every store reads it at call time.

Three ways an app patches ``time.time``: ``monkeypatch.setattr(time, "time", ...)``,
``unittest.mock.patch("time.time")`` and freezegun (skipped if it is not installed; it is in
the ``dev`` extra). Each moves windows and ``created_at`` on every store; the budget server
of the HTTP store runs in this process, so it sees the same clock.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from unittest import mock

import pytest

from litellm_budget_plugin import BudgetManager
from litellm_budget_plugin.stores import BudgetStore

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = 86_400.0

# A way to patch the clock: ``with patched(when)`` makes time.time() return ``when``.
Patch = Callable[[float], AbstractContextManager[Any]]


@contextmanager
def with_monkeypatch(when: float) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: when)
        yield


def with_mock_patch(when: float) -> AbstractContextManager[Any]:
    return mock.patch("time.time", return_value=when)


def with_freezegun(when: float) -> AbstractContextManager[Any]:
    freezegun = pytest.importorskip("freezegun")
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return freezegun.freeze_time(moment)  # type: ignore[no-any-return]


PATCHES: dict[str, Patch] = {
    "monkeypatch": with_monkeypatch,
    "mock.patch": with_mock_patch,
    "freezegun": with_freezegun,
}


@pytest.mark.parametrize("patched", PATCHES.values(), ids=PATCHES.keys())
def test_a_daily_budget_resets_tomorrow(store_factory: Callable[[], BudgetStore], patched: Patch) -> None:
    manager = BudgetManager("contract", store=store_factory())
    with patched(T0):
        record = manager.create_budget(total_budget=1, user="alice", duration="daily")
        manager.update_cost(user="alice", model="gpt-4o-mini", input_text="hello", output_text="world")
    assert record["created_at"] == T0
    assert record["last_updated_at"] == record["created_at"]
    with patched(T0 + DAY / 2):  # later today
        assert manager.get_current_cost("alice") > 0
    with patched(record["created_at"] + DAY + 1):  # tomorrow
        assert manager.get_current_cost("alice") == 0
        assert manager.get_model_cost("alice") == {}
        manager.update_budget_all_users()
        assert manager.user_dict["alice"]["last_updated_at"] == record["created_at"] + DAY


@pytest.mark.parametrize("patched", PATCHES.values(), ids=PATCHES.keys())
def test_created_at_is_the_patched_time(store_factory: Callable[[], BudgetStore], patched: Patch) -> None:
    manager = BudgetManager("contract", store=store_factory())
    with patched(T0):
        first = manager.create_budget(total_budget=1, user="alice", duration="weekly")
    with patched(T0 + 3 * DAY):
        second = manager.create_budget(total_budget=1, user="bob")
    assert first["created_at"] == T0
    assert second["created_at"] == T0 + 3 * DAY
