"""The dashboard page rendered from a real FileStore with real charges (clock frozen), and its
route on a real server socket: numbers, escaping, alerts, the chart, the cache, auth, headers.
The browser test is tests/test_dashboard_browser.py."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from server_thread import ServerClock, ServerThread, directory_stores

from litellm_budget_plugin import budget, dashboard, ledger
from litellm_budget_plugin._dashboard_html import money
from litellm_budget_plugin.errors import GLOBAL_KEY
from litellm_budget_plugin.stores import FileStore
from litellm_budget_plugin.stores.projects import ProjectStores

KEY = "dash-key"
DAY = 86_400.0
# Noon UTC today: the ledger prunes day files by the real clock, so the frozen one stays near it.
NOON = math.floor(time.time() / DAY) * DAY + DAY / 2
EVIL = "<script>alert(1)</script>"


class Page(HTMLParser):
    """The rows, alerts and chart bars of a dashboard page: attributes, and each cell's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.alerts: dict[str, str] = {}
        self.bars: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if "id" in found:
            self.ids.add(found["id"])
        if tag == "tr" and "data-subject" in found:
            self._row = self.rows[found["data-subject"]] = dict(found)
        elif tag == "li" and "data-subject" in found:
            self.alerts[found["data-subject"]] = found["data-level"]
        elif tag == "rect" and "day" in found.get("class", ""):
            self.bars.append(found)
        elif tag == "td" and self._row is not None:
            self._cell, self._text = found.get("class", "").split()[-1], []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row[self._cell] = " ".join("".join(self._text).split())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    opened = FileStore(tmp_path / "p.json")
    opened.clock = lambda: NOON
    try:
        yield opened
    finally:
        opened.close()


def remaining(limit: float, spend: float) -> str:
    return money(limit - spend) if spend <= limit else f"over by {money(spend - limit)}"


def at(store: FileStore, moment: float) -> None:
    store.clock = lambda: moment


def usage(prompt: int = 100, completion: int = 50) -> ledger.Usage:
    return ledger.Usage(prompt, completion)


def test_every_subject_with_its_numbers_as_the_store_has_them(store: FileStore) -> None:
    store.set_budget("alice", 10.0, "daily", fields={"team": "red"})
    store.set_budget("bob", 5.0, "monthly", fields={"windows": [{"budget": 1.0, "duration": 1.0, "model": "gpt-4o"}]})
    store.set_budget("team:red", 20.0, "weekly")
    store.set_budget("tag:search", 3.0)
    store.set_budget("carol", None)
    store.set_budget(GLOBAL_KEY, 100.0, "monthly")
    store.charge("alice", 8.5, "gpt-4o-mini", "c1", usage=usage(), subjects=["tag:search"])
    store.charge("bob", 0.9, "gpt-4o", "c2", usage=usage())
    store.charge("carol", 0.0123, "gpt-4o", "c3", usage=usage())
    store.reserve("bob", "c4", 0.05, ttl=600)

    page = Page(dashboard.render("p", ["p"], store, dashboard.DailySpend()))
    records = store.all()
    assert set(page.rows) == set(records)
    for key, record in records.items():
        row = page.rows[key]
        assert float(row["data-spend"]) == record["current_cost"]
        assert row["spend"].startswith(money(record["current_cost"]))
        limit = record["total_budget"]
        if limit is None:
            assert row["data-budget"] == "" and row["budget"] == "no limit" and row["remaining"] == ""
        else:
            assert float(row["data-budget"]) == limit
            assert row["budget"] == money(limit)
            assert row["remaining"] == remaining(limit, record["current_cost"])
        reset = budget.next_reset(record, NOON)
        assert row["data-resets"] == ("" if reset is None else repr(reset))
    assert page.rows["alice"]["data-kind"] == "user" and "team red" in page.rows["alice"]["subject"]
    assert page.rows["team:red"]["data-kind"] == "team"
    assert page.rows["tag:search"]["data-kind"] == "tag"
    assert page.rows[GLOBAL_KEY]["data-kind"] == "global"
    # highest spend first
    spends = [float(row["data-spend"]) for row in page.rows.values()]
    assert spends == sorted(spends, reverse=True)
    # the main window's reset, in UTC and relative; a budget without duration never resets
    assert page.rows["alice"]["reset"].startswith(time.strftime("%Y-%m-%d", time.gmtime(NOON + DAY)))
    assert "in 1 d" in page.rows["alice"]["reset"]
    assert page.rows["tag:search"]["reset"] == "never"
    # bob's model cap, and what he holds for a call in flight
    assert "$0.9000 of $1 daily on gpt-4o" in page.rows["bob"]["windows"]
    assert "$0.0500 held" in page.rows["bob"]["spend"]


def test_alerts_are_flagged_at_80_percent_and_over_in_any_window(store: FileStore) -> None:
    store.set_budget("calm", 10.0)
    store.set_budget("near", 10.0)
    store.set_budget("over", 1.0)
    store.set_budget("capped", 100.0, fields={"windows": [{"budget": 1.0, "duration": 1.0}]})
    store.charge("calm", 7.9, "m")
    store.charge("near", 8.0, "m")
    store.charge("over", 1.5, "m")
    store.charge("capped", 1.0, "m")  # 1 % of its main budget, all of its daily window
    page = Page(dashboard.render("p", ["p"], store, dashboard.DailySpend()))
    assert page.alerts == {"near": "near", "over": "over", "capped": "over"}
    assert {key: row["data-level"] for key, row in page.rows.items()} == {
        "calm": "",
        "near": "near",
        "over": "over",
        "capped": "over",
    }
    assert page.rows["over"]["remaining"] == "over by $0.5000"


def test_overruns_are_shown(store: FileStore) -> None:
    store.set_budget("alice", 10.0)
    store.charge("alice", 0.5, "m", "c1", held=0.2)
    row = Page(dashboard.render("p", ["p"], store, dashboard.DailySpend())).rows["alice"]
    assert row["data-overruns"] == "1"
    assert row["overruns"] == "1+$0.3000"  # the count, then the dollars on a line of their own


def test_subject_names_are_text_never_markup(store: FileStore) -> None:
    store.set_budget(EVIL, 1.0)
    store.set_budget('tag:"><img src=x onerror=alert(2)>', 1.0)
    store.charge(EVIL, 2.0, "m", usage=usage())
    text = dashboard.render("p", ["p", "q&<r>"], store, dashboard.DailySpend())
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert EVIL in page.rows  # the parser unescapes: shown as the very text the store has
    assert page.rows[EVIL]["subject"] == EVIL
    assert page.alerts[EVIL] == "over"


def test_the_chart_has_30_days_summed_from_the_ledger(store: FileStore) -> None:
    store.set_budget("alice", None)
    store.set_budget("team:red", None)
    for days_ago, cost in ((29, 1.0), (3, 0.25), (3, 0.5), (1, 2.0), (0, 0.125)):
        at(store, NOON - days_ago * DAY)
        store.charge("alice", cost, "m", usage=usage(), subjects=["team:red"])  # two budgets, one charge
    at(store, NOON - 40 * DAY)
    store.charge("alice", 7.0, "m")  # before the chart
    at(store, NOON)
    page = Page(dashboard.render("p", ["p"], store, dashboard.DailySpend()))
    assert len(page.bars) == 30
    shown = {bar["data-day"]: float(bar["data-spend"]) for bar in page.bars}
    day = [time.strftime("%Y-%m-%d", time.gmtime(NOON - back * DAY)) for back in range(30)]
    assert shown[day[29]] == 1.0 and shown[day[3]] == 0.75 and shown[day[1]] == 2.0 and shown[day[0]] == 0.125
    assert sum(shown.values()) == 3.875
    assert list(shown) == sorted(shown) and list(shown)[-1] == day[0]
    assert "today" in page.bars[-1]["class"]


def test_days_that_are_over_are_read_once(store: FileStore, tmp_path: Path) -> None:
    store.set_budget("alice", None)
    at(store, NOON - 2 * DAY)
    store.charge("alice", 1.0, "m", usage=usage())
    at(store, NOON)
    store.charge("alice", 0.5, "m", usage=usage())
    daily = dashboard.DailySpend()
    first = daily.last_days("p", store, NOON)
    for path in tmp_path.glob("p.json.ledger-*"):
        if not path.name.endswith(time.strftime("%Y-%m-%d", time.gmtime(NOON))):
            path.unlink()  # the closed day's file: its total is cached
    store.charge("alice", 0.25, "m", usage=usage())
    second = daily.last_days("p", store, NOON)
    assert first[-3][1] == second[-3][1] == 1.0
    assert (first[-1][1], second[-1][1]) == (0.5, 0.75)  # today is read again
    assert daily.last_days("q", store, NOON)[-3][1] == 0.0  # per project


def test_empty_project_and_no_project(tmp_path: Path) -> None:
    assert "no-project" in Page(dashboard.render(None, [], None, dashboard.DailySpend(), now=NOON)).ids
    page = Page(dashboard.render("new", ["new"], None, dashboard.DailySpend(), now=NOON))
    assert "no-subjects" in page.ids and len(page.bars) == 30


def test_directory_projects_are_listed(tmp_path: Path) -> None:
    for name in ("b", "a"):
        FileStore(tmp_path / f"{name}.json").close()
    (tmp_path / "notes.txt").write_text("x")
    assert ProjectStores.from_target(str(tmp_path)).names() == ["a", "b"]


# --- the route, through a real socket ----------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    clock = ServerClock()
    clock.now = lambda: NOON
    with ServerThread(directory_stores(tmp_path, clock), api_key=KEY) as running:
        yield running


def basic(password: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_route_needs_the_key_and_asks_a_browser_for_it(server: ServerThread) -> None:
    for headers in ({}, basic("wrong"), {"Authorization": "Basic !!!"}, {"Authorization": "Bearer wrong"}):
        answer = httpx.get(f"{server.url}/dashboard", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="litellm-budget"')
    # the API answers a wrong key in JSON; the dashboard with an HTML page
    answer = httpx.post(f"{server.url}/v1/all", json={"project_name": "p"}, headers=basic("wrong"))
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
    for headers in (basic(KEY), basic(KEY, user=""), {"Authorization": f"Bearer {KEY}"}):
        assert httpx.get(f"{server.url}/dashboard", headers=headers).status_code == 200


def test_route_serves_the_project_with_strict_headers(server: ServerThread, tmp_path: Path) -> None:
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"})
    for project in ("beta", "alpha"):
        http.post("/v1/set_budget", json={"project_name": project, "user": f"{project}-user", "total_budget": 5})
    answer = http.get("/dashboard")
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-store"
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    page = Page(answer.text)
    assert set(page.rows) == {"alpha-user"}  # the first project by name
    assert 'href="?project=beta"' in answer.text
    assert set(Page(http.get("/dashboard", params={"project": "beta"}).text).rows) == {"beta-user"}
    assert '<meta http-equiv="refresh" content="7">' in http.get("/dashboard", params={"refresh": "7"}).text
    # a project with no data yet: an empty page, and nothing created
    assert "no-subjects" in Page(http.get("/dashboard", params={"project": "gamma"}).text).ids
    assert not (tmp_path / "gamma.json").exists()
    assert http.get("/dashboard", params={"project": "../etc"}).status_code == 400
    for refresh in ("0", "3601", "²", "٣", "9" * 5000, "-1", " 5"):  # "²" and "٣" are digits to isdigit()
        assert http.get("/dashboard", params={"refresh": refresh}).status_code == 400, refresh
