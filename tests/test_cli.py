"""The litellm-budget command: in-process with click's runner, and as the installed script."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import litellm
import pytest
from click.testing import CliRunner, Result
from server_thread import ServerThread, directory_stores

from litellm_budget_plugin import BudgetExceededError, FileStore, HttpStore
from litellm_budget_plugin.cli import EXIT_ERROR, EXIT_OK, EXIT_UNKNOWN_USER, EXIT_USAGE, main


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "budgets.json"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def records(path: Path) -> dict[str, dict[str, object]]:
    store = FileStore(path)
    try:
        return dict(store.all())  # type: ignore[arg-type]
    finally:
        store.close()


def test_set_show_reset(store_path: Path) -> None:
    result = run("set", "alice", "10", "--duration", "daily", "--store", str(store_path))
    assert result.exit_code == EXIT_OK, result.output
    assert result.output == "alice: budget $10.00 daily, spent $0.00\n"
    assert run("set", "bob", "2.5", "--store", str(store_path)).exit_code == EXIT_OK
    store = FileStore(store_path)
    store.charge("alice", 2.5, "gpt-4o-mini")
    store.charge("bob", 0.00015, "gpt-4o-mini")
    store.close()

    table = run("show", "--store", str(store_path)).output.splitlines()
    assert table[0].split() == ["USER", "SPENT", "BUDGET", "USED", "NEXT", "RESET"]
    alice, bob = table[1].split(), table[2].split()
    assert alice[:4] == ["alice", "$2.50", "$10.00", "25.0%"] and alice[-1] == "UTC"
    assert bob == ["bob", "$0.00015", "$2.50", "0.0%", "never"]

    shown = json.loads(run("show", "alice", "--json", "--store", str(store_path)).output)
    assert list(shown) == ["alice"]
    assert shown["alice"]["current_cost"] == 2.5 and shown["alice"]["total_budget"] == 10.0
    assert shown["alice"]["next_reset"] == pytest.approx(shown["alice"]["last_updated_at"] + 86_400)
    assert "reservations" not in shown["alice"]

    result = run("reset", "alice", "--store", str(store_path))
    assert result.exit_code == EXIT_OK and "reset" in result.output
    assert records(store_path)["alice"]["current_cost"] == 0.0
    assert records(store_path)["alice"]["total_budget"] == 10.0


def test_store_from_environment(store_path: Path) -> None:
    env = {"LITELLM_BUDGET_STORE": str(store_path)}
    assert run("set", "alice", "3", env=env).exit_code == EXIT_OK
    assert records(store_path)["alice"]["total_budget"] == 3.0
    assert "alice" in run("show", env=env).output


def test_empty_store(store_path: Path) -> None:
    result = run("show", "--store", str(store_path))
    assert result.exit_code == EXIT_OK and "no budgets" in result.output
    assert json.loads(run("show", "--json", "--store", str(store_path)).output) == {}


def test_exit_codes(store_path: Path) -> None:
    store = str(store_path)
    unknown = run("show", "ghost", "--store", store)
    assert unknown.exit_code == EXIT_UNKNOWN_USER and "unknown user 'ghost'" in unknown.stderr
    assert run("reset", "ghost", "--store", store).exit_code == EXIT_UNKNOWN_USER
    bad_amount = run("set", "alice", "nan", "--store", store)
    assert bad_amount.exit_code == EXIT_USAGE and "finite" in bad_amount.stderr
    assert run("set", "alice", "ten", "--store", store).exit_code == EXIT_USAGE  # click's own check
    bad_duration = run("set", "alice", "1", "--duration", "fortnightly", "--store", store)
    assert bad_duration.exit_code == EXIT_USAGE and "unknown duration" in bad_duration.stderr
    assert run("show", "--store", "gopher://x").exit_code == EXIT_USAGE
    assert run("frobnicate").exit_code == EXIT_USAGE
    assert not store_path.exists() or records(store_path) == {}

    store_path.write_text("{not json")
    corrupt = run("show", "--store", store)
    assert corrupt.exit_code == EXIT_ERROR and "not valid JSON" in corrupt.stderr
    assert store_path.read_text() == "{not json"


def test_help_documents_exit_codes() -> None:
    for args in (["--help"], ["set", "--help"], ["serve", "--help"]):
        output = run(*args).output
        assert "Exit codes" in output and "unknown user" in output
    assert "--duration" in run("set", "--help").output


@pytest.fixture
def litellm_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user_cost.json written by LiteLLM's own local BudgetManager."""
    folder = tmp_path / "litellm"
    folder.mkdir()
    monkeypatch.chdir(folder)
    manager = litellm.BudgetManager("p")
    before = set(threading.enumerate())
    manager.create_budget(5.0, "alice", "weekly")
    manager.update_cost(user="alice", model="gpt-4o-mini", input_text="hello", output_text="hi there")
    manager.create_budget(1.0, "bob")
    for thread in set(threading.enumerate()) - before:
        thread.join(10)
    manager.save_data()
    yield folder / "user_cost.json"


def test_import_litellm_file(litellm_file: Path, store_path: Path) -> None:
    written = json.loads(litellm_file.read_text())
    result = run("import", str(litellm_file), "--store", str(store_path))
    assert result.exit_code == EXIT_OK and "imported 2 budget(s)" in result.output
    imported = records(store_path)
    assert imported["alice"]["current_cost"] == written["alice"]["current_cost"] > 0
    assert imported["alice"]["duration"] == 7.0
    assert imported["bob"]["total_budget"] == 1.0


def test_import_checks_everything_first(tmp_path: Path, store_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"alice": {"total_budget": 1.0}, "bob": {"total_budget": -3}}))
    result = run("import", str(bad), "--store", str(store_path))
    assert result.exit_code == EXIT_USAGE and "nothing was imported" in result.stderr
    assert records(store_path) == {}
    bad.write_text("[1, 2]")
    assert run("import", str(bad), "--store", str(store_path)).exit_code == EXIT_USAGE
    bad.write_text("{oops")
    assert run("import", str(bad), "--store", str(store_path)).exit_code == EXIT_USAGE
    assert run("import", str(tmp_path / "missing.json"), "--store", str(store_path)).exit_code == EXIT_USAGE


IMPORT_BAD_RECORDS = {
    "NaN in an extra field": b'{"total_budget": 1, "note": NaN}',
    "a tiny duration": b'{"total_budget": 1, "duration": 1e-320}',
    "a duration of 400 digits": b'{"total_budget": 1, "duration": "' + b"9" * 400 + b'd"}',
    "an amount of 10**400": b'{"total_budget": 1' + b"0" * 400 + b"}",
    "970 levels of nesting": b'{"total_budget": 1, "note": ' + b"[" * 970 + b"]" * 970 + b"}",
    "a window past the year 9999": b'{"total_budget": 1, "duration": 1, "last_updated_at": 1e15}',
    "a lone surrogate model": b'{"total_budget": 1, "model_cost": {"\\ud800": 1}}',
}


@pytest.mark.parametrize("record", IMPORT_BAD_RECORDS.values(), ids=IMPORT_BAD_RECORDS.keys())
def test_import_of_a_file_with_one_bad_record_imports_nothing(tmp_path: Path, store_path: Path, record: bytes) -> None:
    run("set", "alice", "4", "--store", str(store_path))
    before = records(store_path)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"amy": {"total_budget": 2}, "zed": ' + record + b', "bob": {"total_budget": 3}}')
    result = run("import", str(bad), "--store", str(store_path))
    assert result.exit_code == EXIT_USAGE, result.output
    assert "nothing was imported" in result.stderr and "Traceback" not in result.stderr
    assert records(store_path) == before


def test_show_leaves_out_a_record_out_of_range_and_names_it(store_path: Path) -> None:
    """A record with a window past the year 9999 (written by hand): listed without it, and
    asked for by name, a clear error."""
    store_path.write_text(
        '{"alice": {"total_budget": 1, "duration": 1, "last_updated_at": 1e15}, "bob": {"total_budget": 3}}'
    )
    listing = run("show", "--store", str(store_path))
    assert listing.exit_code == EXIT_OK, listing.output
    assert "bob" in listing.output and "alice" not in listing.output
    asked = run("show", "alice", "--store", str(store_path))
    assert asked.exit_code == EXIT_ERROR and "last_updated_at is out of range" in asked.stderr
    assert "Traceback" not in asked.stderr


def test_commands_against_a_budget_server(tmp_path: Path) -> None:
    with ServerThread(directory_stores(tmp_path), api_key="k") as server:
        url = ["--store", server.url, "--project", "team"]
        assert run("set", "alice", "4", *url, "--api-key", "k").exit_code == EXIT_OK
        env = {"LITELLM_BUDGET_API_KEY": "k"}
        assert run("show", "alice", "--json", *url, env=env).exit_code == EXIT_OK
        refused = run("show", *url, "--api-key", "wrong")
        assert refused.exit_code == EXIT_USAGE and "API key" in refused.stderr
    assert records(tmp_path / "team.json")["alice"]["total_budget"] == 4.0
    down = run("show", *url, "--api-key", "k")  # the server has stopped
    assert down.exit_code == EXIT_ERROR and "cannot reach budget server" in down.stderr


def test_installed_script_exit_codes(store_path: Path) -> None:
    script = shutil.which("litellm-budget")
    assert script is not None, "pip install -e . installs the litellm-budget script"
    started = time.monotonic()
    ok = subprocess.run([script, "set", "alice", "1", "--store", str(store_path)], capture_output=True, text=True)
    assert ok.returncode == EXIT_OK, ok.stderr
    missing = subprocess.run([script, "show", "ghost", "--store", str(store_path)], capture_output=True, text=True)
    assert missing.returncode == EXIT_UNKNOWN_USER and "ghost" in missing.stderr
    assert time.monotonic() - started < 120


def test_negative_amount_gets_the_amounts_own_error(store_path: Path) -> None:
    result = run("set", "alice", "-5", "--store", str(store_path))
    assert result.exit_code == EXIT_USAGE
    assert "must not be negative" in result.stderr and "No such option" not in result.stderr
    assert not store_path.exists() or records(store_path) == {}


def test_durations_are_echoed_as_written(store_path: Path) -> None:
    for duration, shown in (("1h", "per 1h"), ("30d", "per 30d"), ("monthly", "monthly"), ("2w", "per 2w")):
        result = run("set", "alice", "3", "--duration", duration, "--store", str(store_path))
        assert result.output == f"alice: budget $3.00 {shown}, spent $0.00\n"
    assert records(store_path)["alice"]["duration"] == 14.0
    # Without --duration the budget never resets (the help says so), and the echo shows none.
    assert run("set", "alice", "3", "--store", str(store_path)).output == "alice: budget $3.00, spent $0.00\n"
    assert "duration" not in records(store_path)["alice"]


def test_amounts_are_kept_as_written(store_path: Path) -> None:
    assert run("set", "alice", "10", "--store", str(store_path)).exit_code == EXIT_OK
    assert run("set", "bob", "2.5", "--store", str(store_path)).exit_code == EXIT_OK
    text = Path(store_path).read_text()
    assert '"total_budget": 10,' in text or '"total_budget": 10}' in text, text
    assert isinstance(records(store_path)["alice"]["total_budget"], int)
    assert records(store_path)["bob"]["total_budget"] == 2.5
    result = run("set", "carol", "ten", "--store", str(store_path))
    assert result.exit_code == EXIT_USAGE and "AMOUNT must be a number" in result.stderr and "'ten'" in result.stderr
    assert "carol" not in records(store_path)


def test_empty_show_names_the_store_and_project(tmp_path: Path, store_path: Path) -> None:
    assert str(store_path) in run("show", "--store", str(store_path)).output
    with ServerThread(directory_stores(tmp_path)) as server:
        output = run("show", "--store", server.url).output
    assert "no budgets" in output and server.url in output and "'default'" in output and "--project" in output


def test_set_leaves_a_store_file_to_look_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LITELLM_BUDGET_STORE", raising=False)
    assert run("set", "alice", "2").exit_code == EXIT_OK
    assert json.loads((tmp_path / "user_cost.json").read_text())["alice"]["total_budget"] == 2


# The CLI as a fresh process, reporting at exit whether it imported litellm.
_REPORTING_CLI = """
import atexit, sys
atexit.register(lambda: print(f"litellm imported: {'litellm' in sys.modules}", file=sys.stderr))
from litellm_budget_plugin.cli import main
main(prog_name="litellm-budget")
"""


def _cli_process_env() -> dict[str, str]:
    """No LITELLM_LOCAL_MODEL_COST_MAP: litellm, if imported, would try the network and warn."""
    env = dict(os.environ)
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
    return env


def _cli_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _REPORTING_CLI, *args],
        env=_cli_process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _without_litellm(stderr: str) -> None:
    assert "litellm imported: False" in stderr, stderr
    assert "cost map" not in stderr.lower()


def test_commands_do_not_import_litellm(tmp_path: Path, store_path: Path) -> None:
    litellm_file = tmp_path / "litellm_user_cost.json"
    litellm_file.write_text(json.dumps({"bob": {"total_budget": 1, "current_cost": 0.25, "model_cost": {}}}))
    store = ["--store", str(store_path)]
    commands = [
        ["--help"],
        ["--version"],
        ["set", "alice", "5", "--duration", "1h", *store],
        ["show", *store],
        ["show", "alice", "--json", *store],
        ["reset", "alice", *store],
        ["import", str(litellm_file), *store],
    ]
    for args in commands:
        finished = _cli_process(*args)
        assert finished.returncode == EXIT_OK, (args, finished.stderr)
        _without_litellm(finished.stderr)
    assert set(records(store_path)) == {"alice", "bob"}


def test_serve_does_not_import_litellm_even_to_refuse(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", _REPORTING_CLI, "serve", "--store", str(tmp_path), "--port", "0"],
        env=_cli_process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert "listening on http://" in first, first
        client = HttpStore(first.split("listening on ")[1].strip())
        client.set_budget("alice", 0.5)
        with pytest.raises(BudgetExceededError) as refused:  # the server answered 402
            client.reserve("alice", "call-1", 1.0, 60.0)
        assert refused.value.budget == 0.5 and refused.value.estimate == 1.0
        client.close()
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == EXIT_OK, stderr
    _without_litellm(stderr)
