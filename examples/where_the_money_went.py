"""Where the money went: the ledger, a report, and alerts that reach a webhook.

Run it with ``python examples/where_the_money_went.py``. Calls pass ``mock_response=`` so no API
key or network is needed; the store lives in a temporary folder, and the webhook receiver is a
small HTTP server on loopback, started here (a chat channel or an on-call tool in real life).
"""

import json
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# No network here: litellm must read its bundled price map, set before litellm is imported.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm

from litellm_budget_plugin import BudgetExceededError, BudgetGuard, BudgetManager, budget_scope
from litellm_budget_plugin.alerts import verify_signature
from litellm_budget_plugin.cli import main as litellm_budget

SECRET = "shared-with-the-receiver"
received: list[dict[str, object]] = []


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if verify_signature(SECRET, self.headers["X-Litellm-Budget-Signature"], body):  # sent by us
            received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()

folder = tempfile.TemporaryDirectory(prefix="where-the-money-went-")
store = os.path.join(folder.name, "user_cost.json")
manager = BudgetManager("demo", store=store)
manager.create_budget(total_budget=0.00007, user="alice", duration="daily")
manager.create_budget(total_budget=1.0, user="bob", duration="daily")
manager.create_budget(total_budget=0.0002, user="team:research", duration="monthly")

guard = BudgetGuard(
    manager,
    alert_webhook=f"http://127.0.0.1:{receiver.server_port}/budget-alerts",
    alert_secret=SECRET,
    alert_thresholds=(50, 90),
)
litellm.callbacks.append(guard)  # <- the whole integration

messages = [{"role": "user", "content": "Summarise this quarter's numbers."}]
for user, tags in [("alice", ["summaries"]), ("bob", ["summaries", "finance"])] * 8:
    try:
        with budget_scope(user=user, team="research", tags=tags):  # who pays, without user= on the call
            litellm.completion(model="gpt-4o-mini", messages=messages, max_tokens=20, mock_response="Done.")
    except BudgetExceededError as refused:
        print(f"{user}'s call refused by the budget of {refused.subject}")

if not guard.alerts.flush(60):  # the sender is a background thread; wait for it here, at the end
    print("some alerts were not delivered within a minute")
print("\nalerts received by the webhook:")
for event in received:
    threshold = f"{event['threshold']:g}%" if event.get("threshold") else ""
    print(f"  {event['event']:<18} {event['subject']:<14} {threshold:>4}  spend ${event['spend']:.6f}")

print()
manager.close()
litellm_budget(["report", "--store", store, "--by", "user", "--by", "model", "--since", "1d"], standalone_mode=False)
print()
litellm_budget(["report", "--store", store, "--by", "tag", "--since", "1d"], standalone_mode=False)
receiver.shutdown()
guard.alerts.close()
folder.cleanup()
