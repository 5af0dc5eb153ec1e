"""The budget server's alerts (``serve --alert-webhook``): charges and refusals made through
HttpStore reach a webhook receiver on loopback, once each on the server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import litellm
import pytest
from click.testing import CliRunner
from server_thread import ServerClock, ServerThread, directory_stores
from waiting import wait_until
from webhook_receiver import Receiver

from litellm_budget_plugin import HttpStore
from litellm_budget_plugin.alerts import SECRET_ENV, SIGNATURE_HEADER, AlertSettings, WebhookAlerts, verify_signature
from litellm_budget_plugin.cli import EXIT_OK, EXIT_USAGE, main
from litellm_budget_plugin.errors import BudgetRefusal
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.server import ProjectStores

SECRET = "server-secret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


def server_alerts(stores: ProjectStores, url: str) -> WebhookAlerts:
    settings = AlertSettings.checked(url, SECRET)
    assert settings is not None
    alerts = settings.observer(lambda project: None if project is None else stores.get(project, create=False))
    alerts.sender.backoff, alerts.sender.max_backoff = 0.02, 0.2
    return alerts


def summary(receiver: Receiver) -> list[tuple[object, ...]]:
    return [(e["event"], e["project"], e["subject"], e.get("threshold")) for e in receiver.events()]


def test_charges_and_refusals_through_http_store_send_alerts_from_the_server(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = ServerClock()
    stores = directory_stores(tmp_path, clock)
    alerts = server_alerts(stores, receiver.url)
    with ServerThread(stores, observers=[alerts]) as server:
        client = HttpStore(server.url, project_name="acme", retries=0)
        client.set_budget("alice", 1.0, "daily")
        client.set_budget("team:red", 4.0)
        client.charge("alice", 0.85, "gpt-4o-mini", subjects=["team:red"])
        client.charge("alice", 0.05, "gpt-4o-mini")  # 90%: no threshold newly reached
        client.charge("alice", 0.06, "gpt-4o-mini", subjects=["team:red"])  # 96%; the team's 22.75%
        for n in range(2):
            with pytest.raises(BudgetRefusal):
                client.reserve("alice", f"call-{n}", 0.5, 60.0)
        wait_until(lambda: len(receiver.events()) >= 3)
        assert alerts.flush()
        assert summary(receiver) == [
            ("threshold_crossed", "acme", "alice", 80.0),
            ("threshold_crossed", "acme", "alice", 95.0),
            ("budget_exceeded", "acme", "alice", None),
        ]
        exceeded = receiver.events()[2]
        assert exceeded["spend"] == pytest.approx(0.96) and exceeded["budget"] == 1.0 and exceeded["estimate"] == 0.5
        for request in receiver.received:
            assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER.lower()], request.body)

        now = time.time()
        clock.now = lambda: now + 86_400 + 60  # the server's stores are a day on
        client.charge("alice", 0.1, "gpt-4o-mini")
        wait_until(lambda: len(receiver.events()) >= 4)
        reset = receiver.events()[3]
        assert (reset["event"], reset["project"]) == ("budget_reset", "acme")
        assert reset["previous_spend"] == pytest.approx(0.96)
        assert reset["spend"] == pytest.approx(0.1) and reset["window_start"] > reset["previous_window_start"]
        client.close()
    alerts.close()
    assert alerts.sender.sent == 4


def test_guarded_calls_through_http_store_alert_from_the_server(
    tmp_path: Path, receiver: Receiver, register: Callable[[BudgetGuard], BudgetGuard]
) -> None:
    stores = directory_stores(tmp_path)
    alerts = server_alerts(stores, receiver.url)
    with ServerThread(stores, observers=[alerts]) as server:
        store = HttpStore(server.url, project_name="app", retries=0)
        register(BudgetGuard(store, mode="soft"))

        def ask(user: str) -> None:
            messages = [{"role": "user", "content": "hi"}]
            litellm.completion(model="gpt-4o-mini", messages=messages, mock_response="hello", user=user)

        ask("probe")
        wait_until(lambda: (store.get("probe") or {}).get("current_cost", 0) > 0)  # type: ignore[operator]
        probe = store.get("probe")
        assert probe is not None
        store.set_budget("alice", 5.5 * probe["current_cost"])
        for _ in range(6):
            ask("alice")
        with pytest.raises(litellm.BudgetExceededError):
            ask("alice")
        wait_until(lambda: len(receiver.events()) >= 3)
        assert alerts.flush()
        assert summary(receiver) == [
            ("threshold_crossed", "app", "alice", 80.0),
            ("threshold_crossed", "app", "alice", 95.0),
            ("budget_exceeded", "app", "alice", None),
        ]
        store.close()
    alerts.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alert-webhook", "ftp://hooks.example/x"], "alert_webhook.*ftp://hooks.example/x"),
        (["--alert-webhook", "http://h/x", "--alert-threshold", "0"], "alert_thresholds"),
        (["--alert-threshold", "80"], "need --alert-webhook"),
        (["--alert-webhook", "http://h/x", "--alert-secret-env", "NO_SUCH_SECRET_VAR"], "NO_SUCH_SECRET_VAR"),
    ],
)
def test_bad_alert_options_exit_2_before_serving(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--store", str(tmp_path), "--port", "0", *args], env={SECRET_ENV: ""}, catch_exceptions=False
    )
    assert result.exit_code == EXIT_USAGE
    assert re.search(message, result.stderr), result.stderr


_REPORTING_CLI = """
import atexit, sys
atexit.register(lambda: print(f"litellm imported: {'litellm' in sys.modules}", file=sys.stderr))
from litellm_budget_plugin.cli import main
main(prog_name="litellm-budget")
"""


def test_serve_sends_alerts_and_delivers_them_before_it_exits(tmp_path: Path, receiver: Receiver) -> None:
    env = {**os.environ, "MY_ALERT_SECRET": SECRET}
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
    command = [sys.executable, "-c", _REPORTING_CLI, "serve", "--store", str(tmp_path), "--port", "0"]
    alerting = ["--alert-webhook", receiver.url, "--alert-secret-env", "MY_ALERT_SECRET", "--alert-threshold", "50"]
    receiver.gate.clear()  # nothing is delivered until the server is told to stop
    server = subprocess.Popen([*command, *alerting], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert "listening on http://" in first, first
        client = HttpStore(first.split("listening on ")[1].strip(), retries=0)
        client.set_budget("alice", 1.0)
        client.charge("alice", 0.6, "gpt-4o-mini")
        with pytest.raises(BudgetRefusal):
            client.reserve("alice", "call-1", 0.5, 60.0)
        client.close()
        wait_until(lambda: receiver.waiting == 1, timeout=60)  # the server process starts its sender
        server.send_signal(signal.SIGTERM)
        receiver.gate.set()
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == EXIT_OK, stderr
    assert "litellm imported: False" in stderr, stderr
    assert summary(receiver) == [
        ("threshold_crossed", "default", "alice", 50.0),
        ("budget_exceeded", "default", "alice", None),
    ]
    assert all(verify_signature(SECRET, r.headers[SIGNATURE_HEADER.lower()], r.body) for r in receiver.received)
