"""LiteLLM's example of charging a user for text in and text out, with only the import changed.

``update_cost(user=, model=, input_text=, output_text=)`` prices each text as one user
message, as LiteLLM does, and the daily budget resets by itself a day after it started.
Run it with ``python examples/text_cost.py``; it works offline in a temporary folder.
"""

import os
import tempfile

# No network here: litellm must read its bundled price map, set before litellm is imported.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
workdir = tempfile.TemporaryDirectory(prefix="budget-text-cost-")
os.chdir(workdir.name)

# ---- LiteLLM's example ------------------------------------------------------------------
from litellm_budget_plugin import BudgetManager  # noqa: E402  (was: from litellm import ...)

budget_manager = BudgetManager(project_name="test_project")
user = "12345"
budget_manager.create_budget(total_budget=10, user=user, duration="daily")

input_text = "hello world"
output_text = "it's a sunny day in san francisco"
model = "gpt-3.5-turbo"

budget_manager.update_cost(user=user, model=model, input_text=input_text, output_text=output_text)
print(budget_manager.get_current_cost(user))
# ---- end of LiteLLM's example -----------------------------------------------------------

print(f"model_cost: {budget_manager.get_model_cost(user)}")
print(f"duration: {budget_manager.user_dict[user]['duration']} day(s)")

budget_manager.close()
os.chdir(os.path.dirname(workdir.name))
workdir.cleanup()
