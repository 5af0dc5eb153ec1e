"""BudgetGuard in one line: every litellm call with ``user=`` is checked, then charged.

Run it with ``python examples/guard_demo.py``. Calls pass ``mock_response=`` so no API key
or network is needed; the store lives in a temporary folder.
"""

import os
import tempfile

# No network here: litellm must read its bundled price map, set before litellm is imported.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm

from litellm_budget_plugin import BudgetExceededError, BudgetGuard, BudgetManager

folder = tempfile.TemporaryDirectory(prefix="budget-guard-demo-")
manager = BudgetManager("demo", store=os.path.join(folder.name, "user_cost.json"))
manager.create_budget(total_budget=0.0001, user="alice", duration="daily")

litellm.callbacks.append(BudgetGuard(manager))  # <- the whole integration

messages = [{"role": "user", "content": "Write a haiku about budgets."}]
for attempt in range(1, 20):
    try:
        litellm.completion(model="gpt-4o-mini", messages=messages, user="alice", max_tokens=100, mock_response="ok")
        print(f"call {attempt}: admitted, alice has spent ${manager.get_current_cost('alice'):.6f}")
    except BudgetExceededError as refused:
        print(f"call {attempt}: refused before reaching the provider: {refused}")
        break
