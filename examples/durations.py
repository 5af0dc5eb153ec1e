"""Budgets that reset: LiteLLM's "advanced usage" example, with only the import line changed.

LiteLLM's version passes ``client_type="hosted"`` to keep budgets on LiteLLM's server; this
one keeps them in the local ``user_cost.json`` (a hosted budget server is a separate
feature). A window starts when the budget is created and restarts every ``duration``;
windows roll by themselves whenever a budget is read or charged, so the cron job that calls
``update_budget_all_users()`` is optional. Besides LiteLLM's "daily", "weekly", "monthly"
(28 days, as LiteLLM counts) and "yearly", durations such as "1h", "30d" and "1mo" (30 days)
are accepted. Run it with ``python examples/durations.py``; it works offline in a temporary folder.
"""

import os
import tempfile

# No network here: litellm must read its bundled price map, set before litellm is imported.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
workdir = tempfile.TemporaryDirectory(prefix="budget-durations-")
os.chdir(workdir.name)

# ---- LiteLLM's example ------------------------------------------------------------------
from litellm import completion  # noqa: E402

from litellm_budget_plugin import BudgetManager  # noqa: E402  (was: from litellm import ...)

budget_manager = BudgetManager(project_name="<my-unique-project>")

user = "1234"

# create a budget if new user user
if not budget_manager.is_valid_user(user):
    budget_manager.create_budget(total_budget=10, user=user, duration="monthly")

# check if a given call can be made
if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
    response = completion(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Hey, how's it going?"}],
        mock_response="Fine, and you?",
    )
    budget_manager.update_cost(completion_obj=response, user=user)
else:
    response = "Sorry - no budget!"

# reset the budgets whose window has passed (LiteLLM runs this from a cron job)
budget_manager.update_budget_all_users()
# ---- end of LiteLLM's example -----------------------------------------------------------

print(f"user {user}: spent ${budget_manager.get_current_cost(user):.6f} this month")
for name, duration in [("hourly", "1h"), ("daily", "daily"), ("thirty-days", "30d"), ("one-month", "1mo")]:
    record = budget_manager.create_budget(total_budget=1, user=name, duration=duration)
    print(f"{name}: duration {duration!r} = {record['duration']:.6g} day(s)")

budget_manager.close()
os.chdir(os.path.dirname(workdir.name))
workdir.cleanup()
