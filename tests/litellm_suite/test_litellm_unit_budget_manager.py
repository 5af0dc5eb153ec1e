"""LiteLLM's unit test of BudgetManager, run on ours.

From BerriAI/litellm ``tests/test_litellm/test_budget_manager.py`` (commit 13f4375).
Changed: only the first import line (``from litellm_budget_plugin import BudgetManager``).
The second still imports ``litellm.budget_manager``: its ``time`` is the ``time`` module, so
the test patches ``time.time`` for everyone, and our store reads it once per operation.
"""

# ruff: noqa
# fmt: off
from litellm_budget_plugin import BudgetManager
import litellm.budget_manager as budget_manager_module


def test_create_budget_uses_current_time(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    manager = BudgetManager(project_name="test", client_type="local")
    monkeypatch.setattr(manager, "_save_data_thread", lambda: None)
    times = iter([1000.0, 1001.0])
    monkeypatch.setattr(budget_manager_module.time, "time", lambda: next(times))

    budget1 = manager.create_budget(100.0, "user1", duration="daily")
    budget2 = manager.create_budget(100.0, "user2", duration="daily")

    assert budget1["created_at"] == 1000.0
    assert budget2["created_at"] == 1001.0
    assert budget2["created_at"] > budget1["created_at"]
