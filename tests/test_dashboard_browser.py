"""The dashboard in a real headless browser: Debian's Chromium, driven by Playwright, loads the
page from a budget server this test starts (charges made through HttpStore), and the numbers
it shows are compared with the store's. It also checks the chart, the self-refresh (a charge
made after the load appears), that no request leaves the server's origin, and saves a
screenshot (its path is printed: ``pytest -s`` or the captured output of a failure).

Chromium comes from Debian (``apt-get install chromium fonts-dejavu-core``, which .ci/run
does); Playwright never downloads a browser here. Without either this test skips, except in
CI (``$CI`` set), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_thread import ServerThread, directory_stores
from test_dashboard import remaining

from litellm_budget_plugin import ledger
from litellm_budget_plugin._dashboard_html import money
from litellm_budget_plugin.stores.http import HttpStore

KEY = "browser-key"
EVIL = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Needed on this machine (root, no GPU, no network beyond loopback).
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test: .ci/run installs it)")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium(profile: Path, **options: Any) -> Iterator[Any]:
    """Debian's Chromium with a fresh profile (a Playwright BrowserContext)."""
    if not os.path.exists(CHROMIUM):
        _missing("chromium is not installed (apt-get install -y chromium fonts-dejavu-core)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS, **options
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    """A browser that answers the server's Basic challenge with the key (any user name)."""
    credentials = {"username": "viewer", "password": KEY}
    with chromium(tmp_path / "profile", http_credentials=credentials, viewport={"width": 1280, "height": 900}) as ctx:
        yield ctx


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    (tmp_path / "stores").mkdir()
    with ServerThread(directory_stores(tmp_path / "stores"), api_key=KEY) as running:
        yield running


_ROWS = """rows => rows.map(row => ({
    subject: row.dataset.subject,
    spend: row.dataset.spend,
    budget: row.dataset.budget,
    level: row.dataset.level,
    shownSubject: row.querySelector("td.subject").firstChild.textContent,
    shownSpend: row.querySelector("td.spend").firstChild.textContent,
    shownBudget: row.querySelector("td.budget").textContent,
    shownRemaining: row.querySelector("td.remaining").textContent,
}))"""


def test_dashboard_in_chromium(browser_context: Any, server: ServerThread, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    store = HttpStore(server.url, project_name="web", api_key=KEY)
    store.set_budget("alice", 10.0, "daily", fields={"team": "red"})
    store.set_budget("bob", 2.0, "monthly")
    store.set_budget("team:red", 50.0, "monthly")
    store.set_budget("tag:search", 5.0, fields={"windows": [{"budget": 1.0, "duration": 1.0}]})
    store.set_budget(EVIL, 1.0)
    store.charge("alice", 8.25, "gpt-4o", "c1", subjects=["tag:search"], usage=ledger.Usage(1200, 300))
    store.charge("bob", 0.375, "gpt-4o-mini", "c2", usage=ledger.Usage(400, 100))
    store.charge(EVIL, 1.5, "gpt-4o-mini", "c3", usage=ledger.Usage(10, 10))

    page = browser_context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    answer = page.goto(f"{server.url}/dashboard?project=web&refresh=3600")  # still while it is read
    assert answer is not None and answer.status == 200

    shown = {row["subject"]: row for row in page.eval_on_selector_all("#subjects tbody tr", _ROWS)}
    records = store.all()
    assert set(shown) == set(records)
    for key, record in records.items():
        row = shown[key]
        assert row["shownSubject"] == key  # the script-named subject too: as text
        assert float(row["spend"]) == record["current_cost"]
        assert row["shownSpend"] == money(record["current_cost"])
        limit = record["total_budget"]
        assert limit is not None and float(row["budget"]) == limit
        assert row["shownBudget"] == money(limit)
        assert row["shownRemaining"] == remaining(limit, record["current_cost"])
    assert shown["alice"]["level"] == "near" and shown[EVIL]["level"] == "over"
    assert shown["tag:search"]["level"] == "over"  # its $1 daily window holds alice's $8.25 call
    assert dialogs == []  # nothing ran
    expect(page.locator("#chart rect.day")).to_have_count(30)
    today = page.locator("#chart rect.day.today")
    assert float(today.get_attribute("data-spend")) == 8.25 + 0.375 + 1.5
    assert page.locator("#card-alerts b").text_content() == "3"

    # The page reloads itself (and the browser resends the key): a charge made now appears.
    assert page.goto(f"{server.url}/dashboard?project=web&refresh=2") is not None
    store.charge("carol", 0.5, "gpt-4o", "c4", default={"total_budget": 4.0, "duration": "daily"})
    expect(page.locator('tr[data-subject="carol"] td.spend')).to_have_text("$0.5000", timeout=30_000)
    expect(page.locator("#card-today b")).to_have_text(money(8.25 + 0.375 + 1.5 + 0.5))

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"dashboard screenshot: {screenshot}")

    # Everything came from the server itself: no other origin, no asset.
    assert requests and all(url.startswith(f"{server.url}/dashboard") for url in requests), requests


def test_without_the_key_the_browser_gets_a_401(tmp_path: Path, server: ServerThread) -> None:
    with chromium(tmp_path / "anonymous") as context:
        from playwright.sync_api import Error

        page = context.new_page()
        answers: list[Any] = []
        page.on("response", lambda answer: answers.append(answer))
        # Headless, nobody is there to type the key: Chromium gives up on the challenge.
        with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(f"{server.url}/dashboard")
        assert [answer.status for answer in answers] == [401]
        assert answers[0].headers["www-authenticate"].startswith('Basic realm="litellm-budget"')
