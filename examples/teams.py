"""Teams, tags, a model cap and calls made by a framework without ``user=``.

Run it with ``python examples/teams.py``. Calls pass ``mock_response=`` so no API key or
network is needed; the store lives in a temporary folder. Each call is held against every
budget that applies (user, model cap, team, tags) in one store operation, and a refusal names
the budget that refused.
"""

import os
import tempfile

# No network here: litellm must read its bundled price map, set before litellm is imported.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm

from litellm_budget_plugin import BudgetExceededError, BudgetGuard, BudgetManager, budget_scope

folder = tempfile.TemporaryDirectory(prefix="budget-teams-")
manager = BudgetManager("teams", store=os.path.join(folder.name, "user_cost.json"))
manager.create_budget(total_budget=0.0003, user="team:red", duration="daily", timezone="Europe/Paris")
manager.create_budget(total_budget=0.0001, user="tag:search", duration="daily")
for member in ("alice", "bob"):
    # $1 a day each, but at most $0.0002 a day on gpt-4o-mini
    windows = [{"budget": 0.0002, "duration": "daily", "model": "gpt-4o-mini"}]
    manager.create_budget(total_budget=1, user=member, duration="daily", team="red", windows=windows)

litellm.callbacks.append(BudgetGuard(manager))  # <- the whole integration

messages = [{"role": "user", "content": "Write a haiku about budgets."}]


def ask(**kwargs: object) -> str:
    """One call; what happened to it."""
    try:
        litellm.completion(model="gpt-4o-mini", messages=messages, max_tokens=100, mock_response="ok", **kwargs)
        return "admitted"
    except BudgetExceededError as refused:
        window = f" ({refused.window})" if refused.window else ""
        return f"refused by {refused.subject}{window}"


def until_refused(who: str, **kwargs: object) -> None:
    """Call until a budget refuses; print each outcome."""
    for attempt in range(1, 20):
        outcome = ask(**kwargs)
        print(f"{who} call {attempt}: {outcome}")
        if outcome != "admitted":
            return


print("-- a tag's budget: calls tagged 'search'")
until_refused("alice, search", user="alice", metadata={"tags": ["search"]})
print("-- a model cap: alice's gpt-4o-mini calls")
until_refused("alice,", user="alice")
print("-- the team's budget: bob shares it with alice")
until_refused("bob,", user="bob")


def framework_agent() -> str:
    """Stands for a framework calling litellm for the app (LangChain, DSPy...): no user=."""
    return ask()


print("-- calls made inside budget_scope(user='carol', team='blue') are carol's and blue's")
with budget_scope(user="carol", team="blue"):
    print(f"carol, framework call: {framework_agent()}")

for key in ("alice", "bob", "carol", "team:red", "team:blue", "tag:search"):
    total = manager.get_total_budget(key) if manager.is_valid_user(key) else None
    limit = "no budget" if not total else f"budget ${total:g}"
    print(f"{key}: spent ${manager.get_current_cost(key):.6f} ({limit})")

manager.close()
folder.cleanup()
