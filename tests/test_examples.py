"""The examples run as users run them: a fresh interpreter, offline, leaving no files behind."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import litellm
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# LiteLLM's BudgetManager examples, ported with only the import line changed
SEED_PORTS = ["quickstart.py", "text_cost.py", "durations.py"]


def run_example(name: str, tmp_path: Path) -> str:
    """Run ``examples/<name>`` in an empty working directory and temp folder; return its stdout."""
    cwd, temp = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir()
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)  # each example must set it itself
    env.pop("LITELLM_BUDGET_STORE", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert list(cwd.iterdir()) == [], "the example wrote into the working directory"
    assert list(temp.iterdir()) == [], "the example left its temporary folder behind"
    return result.stdout


@pytest.mark.parametrize("name", SEED_PORTS)
def test_example_differs_from_litellms_only_in_the_import(name: str) -> None:
    tree = ast.parse((EXAMPLES / name).read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    imported = {
        (node.module, alias.name) for node in imports if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert ("litellm_budget_plugin", "BudgetManager") in imported
    assert ("litellm", "BudgetManager") not in imported
    # every completion() runs offline
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "completion"
    ]
    assert all(any(k.arg == "mock_response" for k in call.keywords) for call in calls)
    # the offline switch is set before litellm or this package is imported
    first_litellm_import = min(
        node.lineno
        for node in imports
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("litellm")
    )
    offline = [
        node.lineno
        for node in tree.body
        if isinstance(node, ast.Assign) and "LITELLM_LOCAL_MODEL_COST_MAP" in ast.unparse(node)
    ]
    assert offline and offline[0] < first_litellm_import


def test_quickstart(tmp_path: Path) -> None:
    lines = run_example("quickstart.py", tmp_path).splitlines()
    assert lines == [
        "reply: Going well, thanks!",
        "user 1234 spent $0.000035 of $10",
        "call 1: made, spend now $0.000035",
        "call 2: made, spend now $0.000070",
        "call 3: made, spend now $0.000105",
        "call 4: Sorry - no budget!",
        "call 5: Sorry - no budget!",
        "another manager sees user 5678 at $0.000105",
        "users: ['1234', '5678']",
    ]


def test_text_cost_matches_litellm_pricing(tmp_path: Path) -> None:
    # What LiteLLM's own BudgetManager.update_cost charges for these texts.
    model = "gpt-3.5-turbo"
    prompt = litellm.token_counter(model=model, messages=[{"role": "user", "content": "hello world"}])
    completion = litellm.token_counter(
        model=model, messages=[{"role": "user", "content": "it's a sunny day in san francisco"}]
    )
    expected = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion))

    lines = run_example("text_cost.py", tmp_path).splitlines()
    assert float(lines[0]) == pytest.approx(expected, rel=1e-12)
    assert lines[1] == f"model_cost: {{'gpt-3.5-turbo': {float(lines[0])!r}}}"
    assert lines[2] == "duration: 1 day(s)"


def test_durations(tmp_path: Path) -> None:
    lines = run_example("durations.py", tmp_path).splitlines()
    assert lines == [
        "user 1234: spent $0.000035 this month",
        "hourly: duration '1h' = 0.0416667 day(s)",
        "daily: duration 'daily' = 1 day(s)",
        "thirty-days: duration '30d' = 30 day(s)",
        "one-month: duration '1mo' = 30 day(s)",
    ]


def test_teams_example_refuses_by_the_budget_that_ran_out_and_charges_every_budget(tmp_path: Path) -> None:
    lines = run_example("teams.py", tmp_path).splitlines()
    refusals = [line.split(": ", 1)[1] for line in lines if ": refused by " in line]
    assert refusals == [
        "refused by tag:search",
        "refused by alice ($0.0002 daily on gpt-4o-mini)",
        "refused by team:red",
    ]
    assert "carol, framework call: admitted" in lines
    spent = {line.split(": spent")[0]: float(line.split("$")[1].split()[0]) for line in lines if ": spent $" in line}
    assert spent["team:red"] == pytest.approx(spent["alice"] + spent["bob"], abs=2e-6)
    assert 0 < spent["team:blue"] == pytest.approx(spent["carol"], abs=1e-9)
    assert 0 < spent["tag:search"] <= 0.0001 and spent["team:red"] <= 0.0003


def test_where_the_money_went_sends_signed_alerts_and_reports_the_ledger(tmp_path: Path) -> None:
    lines = run_example("where_the_money_went.py", tmp_path).splitlines()
    assert lines.count("alice's call refused by the budget of alice") == 3
    alerts = {tuple(line.split()[:3]) for line in lines if line.startswith("  threshold_crossed")}
    assert alerts == {
        ("threshold_crossed", "alice", "50%"),
        ("threshold_crossed", "alice", "90%"),
        ("threshold_crossed", "team:research", "50%"),
    }
    assert sum(line.startswith("  budget_exceeded    alice") for line in lines) == 1  # once in the window
    rows = {
        line.split()[0]: line.split() for line in lines if line.startswith(("alice ", "bob ", "finance ", "summaries "))
    }
    assert rows["alice"][1:2] + rows["alice"][3:4] == ["gpt-4o-mini", "5"] and rows["bob"][3] == "8"
    assert rows["summaries"][2] == "13" and rows["finance"][2] == "8"  # bob's calls carry both tags
    totals = [line.split() for line in lines if line.startswith("total")]
    assert [total[-3] for total in totals] == ["13", "13"]
