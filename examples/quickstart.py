"""Quick start: LiteLLM's per-user budget example, with only the import line changed.

Run it with ``python examples/quickstart.py``. The middle part is the example from LiteLLM's
BudgetManager documentation; ``from litellm import BudgetManager`` became
``from litellm_budget_plugin import BudgetManager``. The calls pass ``mock_response=`` so no
API key or network is needed, and the script works in a temporary folder, so the
``user_cost.json`` it writes does not outlive it.
"""

import os
import tempfile

# No network here: litellm must read its bundled price map, set before litellm is imported.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# BudgetManager keeps user_cost.json in the working directory, as LiteLLM's does.
workdir = tempfile.TemporaryDirectory(prefix="budget-quickstart-")
os.chdir(workdir.name)

# ---- LiteLLM's example ------------------------------------------------------------------
from litellm import completion  # noqa: E402

from litellm_budget_plugin import BudgetManager  # noqa: E402  (was: from litellm import ...)

budget_manager = BudgetManager(project_name="test_project")

user = "1234"

# create a budget if new user user
if not budget_manager.is_valid_user(user):
    budget_manager.create_budget(total_budget=10, user=user)

# check if a given call can be made
if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
    response = completion(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Hey, how's it going?"}],
        mock_response="Going well, thanks!",
    )
    budget_manager.update_cost(completion_obj=response, user=user)
else:
    response = "Sorry - no budget!"
# ---- end of LiteLLM's example -----------------------------------------------------------

print(f"reply: {response.choices[0].message.content}")
spent, total = budget_manager.get_current_cost(user), budget_manager.get_total_budget(user)
print(f"user {user} spent ${spent:.6f} of ${total:g}")

# The same check-then-call loop, with a budget that runs out after a few calls. Each mocked
# call costs $0.000035 (10 prompt and 20 completion tokens of gpt-3.5-turbo). As in LiteLLM,
# a call is allowed while the spend is at most the budget, so the last one may overshoot.
small = "5678"
budget_manager.create_budget(total_budget=0.0001, user=small)
for attempt in range(1, 6):
    if budget_manager.get_current_cost(user=small) <= budget_manager.get_total_budget(small):
        response = completion(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": f"Question {attempt}"}],
            mock_response="An answer.",
        )
        budget_manager.update_cost(completion_obj=response, user=small)
        print(f"call {attempt}: made, spend now ${budget_manager.get_current_cost(small):.6f}")
    else:
        print(f"call {attempt}: Sorry - no budget!")

# Every change is on disk when update_cost returns: a second manager (another worker
# process, say) sees the spend at once, without save_data() or a reload.
other_process_view = BudgetManager(project_name="test_project")
print(f"another manager sees user {small} at ${other_process_view.get_current_cost(small):.6f}")
print(f"users: {sorted(other_process_view.get_users())}")

budget_manager.close()
other_process_view.close()
os.chdir(os.path.dirname(workdir.name))
workdir.cleanup()
