"""Observers of a guard (metrics, alerts) are told of admissions, refusals, charges, overruns
and store failures, and one that raises never changes what a call does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import litellm
import pytest
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, BudgetManager
from litellm_budget_plugin.errors import BudgetExceededError as Refusal
from litellm_budget_plugin.errors import ConfigurationError
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.observe import BudgetObserver
from litellm_budget_plugin.overruns import Overrun

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]


class Recorder(BudgetObserver):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def admitted(self, project: str | None, keys: Sequence[str], model: str) -> None:
        self.events.append(("admitted", tuple(keys), model))

    def refused(self, project: str | None, error: Refusal) -> None:
        self.events.append(("refused", error.subject))

    def charged(self, project: str | None, keys: Sequence[str], cost: float, model: str) -> None:
        self.events.append(("charged", tuple(keys), cost))

    def overran(self, project: str | None, call: Overrun) -> None:
        self.events.append(("overran", call.user))

    def store_timed(self, project: str | None, operation: str, seconds: float) -> None:
        self.events.append(("timed", operation, seconds >= 0))


class Broken(BudgetObserver):
    def admitted(self, project: str | None, keys: Sequence[str], model: str) -> None:
        raise RuntimeError("observer bug")

    def charged(self, project: str | None, keys: Sequence[str], cost: float, model: str) -> None:
        raise RuntimeError("observer bug")


def test_observers_see_admission_charge_and_refusal(
    manager: BudgetManager, register: Callable[[BudgetGuard], BudgetGuard]
) -> None:
    manager.create_budget(1.0, "alice")
    manager.create_budget(1e-6, "bob")
    manager.store.set_budget("team:red", 1.0)
    recorder = Recorder()
    register(BudgetGuard(manager, observers=[Broken(), recorder]))
    litellm.completion(model=MODEL, messages=MESSAGES, user="alice", metadata={"team": "red"}, mock_response="hello")
    wait_until(lambda: any(event[0] == "charged" for event in recorder.events))
    kinds = [event[0] for event in recorder.events]
    assert kinds[:3] == ["timed", "admitted", "charged"]
    assert recorder.events[1][1] == ("alice", "team:red")
    charged = recorder.events[2]
    assert charged[1] == ("alice", "team:red") and charged[2] == pytest.approx(manager.get_current_cost("alice"))
    with pytest.raises(BudgetExceededError):
        litellm.completion(model=MODEL, messages=MESSAGES, user="bob", mock_response="x")
    assert recorder.events[-1] == ("refused", "bob")


def test_observers_must_be_observers(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="observers must be BudgetObserver"):
        BudgetGuard(tmp_path / "b.json", observers=[object()])  # type: ignore[list-item]
