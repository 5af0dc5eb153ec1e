"""litellm-budget report --chart: PNG and SVG files that are whole and say what they show."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import test_report
from click.testing import CliRunner, Result
from test_report import FROM, TO

from litellm_budget_plugin import FileStore
from litellm_budget_plugin.cli import EXIT_OK, EXIT_USAGE, main

pytest.importorskip("matplotlib")

SVG = "{http://www.w3.org/2000/svg}"
store_path = test_report.store_path  # the fixture: a store charged with test_report's charges


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def chart(store_path: Path, target: Path, *args: str) -> Result:
    return run("report", "--store", str(store_path), "--from", FROM, "--to", TO, "--chart", str(target), *args)


def svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return [" ".join("".join(node.itertext()).split()) for node in root.iter(f"{SVG}text")]


def test_png(store_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "spend.png"
    result = chart(store_path, target)
    assert result.exit_code == EXIT_OK, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 10_000
    assert "carol" in result.stdout  # the table is printed too
    assert f"chart written to {target}" in result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".spend")] == []  # no temporary left


def test_svg_has_legend_money_axis_and_budget_lines(store_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "spend.svg"
    result = chart(store_path, target, "--json")
    assert result.exit_code == EXIT_OK, result.output
    texts = svg_texts(target)
    assert any(text.startswith("Spend per day by user") for text in texts)
    assert {"carol", "bob", "alice", "team:red", "user"} <= set(texts)  # the legend and its title
    assert "$0.00" in texts and any(text.startswith("$") and text != "$0.00" for text in texts)
    # daily and weekly budgets, as a pace per day; carol's never resets: no line
    assert "alice: budget $5.00 a day" in texts
    assert "bob: budget $70.00 per 7 days: $10.00 a day" in texts
    assert "team:red: budget $50.00 per 28 days: $1.79 a day" in texts
    assert not any(text.startswith("carol: budget") for text in texts)


def test_top_and_other_by_team(store_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "teams.svg"
    assert chart(store_path, target, "--by", "team", "--top", "1").exit_code == EXIT_OK
    texts = svg_texts(target)
    assert "blue" in texts and "other" in texts and "red" not in texts
    assert any("counts in each" in text for text in texts)
    assert not any(": budget" in text for text in texts)  # one panel: the grouping has other teams' budgets only


def test_by_day_and_model(store_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "models.svg"
    assert chart(store_path, target, "--by", "day", "--by", "model").exit_code == EXIT_OK
    assert {"gpt-4o", "gpt-4o-mini"} <= set(svg_texts(target))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("spend.pdf", "must end in .png or .svg"),
        ("no-such-folder/spend.png", "does not exist"),
        ("a-file.txt/spend.png", "does not exist"),
        ("a-folder.png", "is a folder"),
    ],
)
def test_bad_chart_path(store_path: Path, tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "a-file.txt").write_text("x")
    (tmp_path / "a-folder.png").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = chart(store_path, tmp_path / name)
    assert result.exit_code == EXIT_USAGE
    assert message in result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_matplotlib_names_the_extra(store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = chart(store_path, tmp_path / "spend.png")
    assert result.exit_code == EXIT_USAGE
    assert 'pip install "litellm_budget_plugin[charts]"' in result.stderr
    assert not (tmp_path / "spend.png").exists()


def test_a_budget_tracked_without_a_limit_has_no_line(store_path: Path, tmp_path: Path) -> None:
    store = FileStore(store_path)
    try:
        store.set_budget("alice", None, "daily")  # tracked, resets, no limit
    finally:
        store.close()
    target = tmp_path / "spend.svg"
    assert chart(store_path, target, "--by", "user").exit_code == EXIT_OK
    assert not any(text.startswith("alice: budget") for text in svg_texts(target))
