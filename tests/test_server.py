"""The budget server: LiteLLM's own hosted client, this package's HttpStore, and bad requests.

Servers run in this process on a free loopback port (tests/server_thread.py), and once as
``litellm-budget serve`` in a subprocess. Nothing is mocked: requests go through sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest
from server_thread import ServerThread, directory_stores
from waiting import wait_until

from litellm_budget_plugin import (
    BudgetExceededError,
    BudgetManager,
    ConfigurationError,
    FileStore,
    StoreUnavailableError,
    UnknownUserError,
)
from litellm_budget_plugin.server import MAX_BODY_BYTES, ProjectStores, check_bind, check_project_name
from litellm_budget_plugin.stores import store_from_url
from litellm_budget_plugin.stores.http import HttpStore

KEY = "s3cret-key"
# The installed console script, as users run it.
CLI = [shutil.which("litellm-budget") or "litellm-budget"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(directory_stores(tmp_path)) as running:
        yield running


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(directory_stores(tmp_path), api_key=KEY) as running:
        yield running


def wait_for_litellm_saves(action: Callable[[], object]) -> None:
    """LiteLLM's BudgetManager saves from a new thread per change: wait for those threads."""
    before = set(threading.enumerate())
    action()
    for thread in set(threading.enumerate()) - before:
        thread.join(10)


def file_records(path: Path) -> dict[str, Any]:
    store = FileStore(path)
    try:
        return dict(store.all())
    finally:
        store.close()


# --- LiteLLM's own hosted BudgetManager --------------------------------------------------


def test_litellm_hosted_budget_manager_round_trip(server: ServerThread, tmp_path: Path) -> None:
    manager = litellm.BudgetManager("team-a", client_type="hosted", api_base=server.url)
    assert manager.user_dict == {}  # unknown project: {"status": "error"}, read as empty
    wait_for_litellm_saves(lambda: manager.create_budget(10.0, "alice", "daily"))
    wait_for_litellm_saves(
        lambda: manager.update_cost(
            user="alice", model="gpt-4o-mini", input_text="hello there", output_text="general kenobi"
        )
    )
    cost = manager.get_current_cost("alice")
    assert cost > 0
    assert manager.save_data() == {"status": "success"}

    # A new LiteLLM client, this package's client, and the file on disk all agree.
    again = litellm.BudgetManager("team-a", client_type="hosted", api_base=server.url)
    assert again.get_current_cost("alice") == cost
    assert again.get_total_budget("alice") == 10.0
    assert again.user_dict["alice"]["duration"] == 1.0
    assert again.get_model_cost("alice") == {"gpt-4o-mini": cost}
    assert "reservations" not in again.user_dict["alice"]
    ours = HttpStore(server.url, project_name="team-a")
    assert ours.get("alice")["current_cost"] == cost  # type: ignore[index]
    assert file_records(tmp_path / "team-a.json")["alice"]["current_cost"] == cost

    # Projects are isolated.
    other = litellm.BudgetManager("team-b", client_type="hosted", api_base=server.url)
    assert other.user_dict == {}
    assert not (tmp_path / "team-b.json.journal").exists()  # reading did not create it


def test_litellm_set_budget_is_a_whole_dict_replace(server: ServerThread) -> None:
    store = HttpStore(server.url, project_name="p")
    store.set_budget("alice", 5.0)
    store.set_budget("bob", 5.0)
    store.reserve("bob", "call-1", 1.0, ttl=600)
    manager = litellm.BudgetManager("p", client_type="hosted", api_base=server.url)
    del manager.user_dict["alice"]
    manager.user_dict["carol"] = {"total_budget": 3}
    assert manager.save_data() == {"status": "success"}
    assert store.get("alice") is None  # missing from the dict: deleted
    assert store.get("carol")["total_budget"] == 3.0  # type: ignore[index]
    # bob was sent back unchanged: not rewritten, so his hold of a call in flight is kept.
    assert "call-1" in store.get("bob").get("reservations", {})  # type: ignore[union-attr]


def test_litellm_client_with_api_key(keyed_server: ServerThread) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    manager = litellm.BudgetManager("p", client_type="hosted", api_base=keyed_server.url, headers=headers)
    manager.create_budget(2.0, "alice")
    assert manager.save_data() == {"status": "success"}  # LiteLLM saves no budget without duration
    assert HttpStore(keyed_server.url, project_name="p", api_key=KEY).get("alice") is not None
    with pytest.raises(Exception, match="401"):
        litellm.BudgetManager("p", client_type="hosted", api_base=keyed_server.url)


def test_our_hosted_budget_manager(server: ServerThread) -> None:
    manager = BudgetManager("p", client_type="hosted", api_base=server.url)
    manager.create_budget(1.0, "alice", "weekly")
    manager.update_cost("alice", model="gpt-4o-mini", input_text="hi", output_text="hello")
    assert manager.get_current_cost("alice") > 0
    seen_by_litellm = litellm.BudgetManager("p", client_type="hosted", api_base=server.url)
    assert seen_by_litellm.get_current_cost("alice") == manager.get_current_cost("alice")
    assert seen_by_litellm.user_dict["alice"]["duration"] == 7.0
    with pytest.raises(UnknownUserError):
        manager.get_current_cost("nobody")


# --- HttpStore ---------------------------------------------------------------------------


def test_store_from_url_makes_http_stores() -> None:
    store = store_from_url("http://127.0.0.1:1/base/", project="x", headers={"X-A": "1"})
    assert isinstance(store, HttpStore)
    assert (store.api_base, store.project_name) == ("http://127.0.0.1:1/base", "x")
    assert store_from_url("https://example.invalid").project_name == "default"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError):
        HttpStore("ftp://host")
    with pytest.raises(ConfigurationError):
        HttpStore("http://127.0.0.1:1", retries=-1)


def test_over_budget_reservation_carries_the_numbers(server: ServerThread) -> None:
    store = HttpStore(server.url, project_name="p")
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.4, "m")
    store.reserve("alice", "c1", 0.5, ttl=60)
    with pytest.raises(BudgetExceededError) as info:
        store.reserve("alice", "c2", 0.2, ttl=60)
    error = info.value
    assert (error.user, error.spend, error.budget, error.estimate) == ("alice", 0.4, 1.0, 0.2)
    assert error.reserved == pytest.approx(0.5)
    assert isinstance(error, litellm.BudgetExceededError)


def test_charge_without_call_id_is_made_idempotent(server: ServerThread) -> None:
    store = HttpStore(server.url, project_name="p")
    store.set_budget("alice", 1.0)
    record = store.charge("alice", 0.1, "m")
    assert len(record.get("applied", {})) == 1  # a generated call id: a retry cannot double it


def test_unreachable_server_is_store_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    store = HttpStore(url, project_name="p", retries=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}") as info:
        store.charge("alice", 1.0, "m")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert time.monotonic() - started < 5


class SilentServer:
    """Accepts connections and never answers: counts how many requests were attempted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_timeouts_retry_idempotent_calls_only() -> None:
    silent = SilentServer()
    try:
        store = HttpStore(silent.url, project_name="p", timeout=0.2, retries=2)
        with pytest.raises(StoreUnavailableError, match="did not answer") as info:
            store.get("alice")
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)
        assert len(silent.connections) == 3  # a read: first attempt and two retries
        with pytest.raises(StoreUnavailableError):
            store.reset("alice")  # may have been applied: not repeated
        assert len(silent.connections) == 4
    finally:
        silent.close()


def test_http_store_after_fork(server: ServerThread) -> None:
    store = HttpStore(server.url, project_name="p")
    store.set_budget("alice", 10.0)  # the parent's connection is open now
    pid = os.fork()
    if pid == 0:  # child: must open its own connection
        try:
            store.charge("alice", 1.0, "m", call_id="from-child")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.charge("alice", 2.0, "m", call_id="from-parent")
    assert store.get("alice")["current_cost"] == 3.0  # type: ignore[index]


def test_projects_are_isolated(server: ServerThread, tmp_path: Path) -> None:
    a = HttpStore(server.url, project_name="a")
    b = HttpStore(server.url, project_name="b")
    a.set_budget("alice", 1.0)
    a.charge("alice", 0.5, "m")
    assert b.get("alice") is None and b.all() == {}
    b.set_budget("alice", 9.0)
    assert a.get("alice")["total_budget"] == 1.0  # type: ignore[index]
    assert file_records(tmp_path / "a.json")["alice"]["current_cost"] == 0.5
    assert file_records(tmp_path / "b.json")["alice"]["current_cost"] == 0.0


def test_reads_of_unknown_project_create_nothing(server: ServerThread, tmp_path: Path) -> None:
    store = HttpStore(server.url, project_name="ghost")
    assert store.get("alice") is None and store.all() == {}
    assert store.settle("c1", 1.0, "m") is False and store.release("c1") is False
    assert store.delete("alice") is False
    with pytest.raises(UnknownUserError):
        store.charge("alice", 1.0, "m")
    with pytest.raises(UnknownUserError):
        store.reset("alice")
    assert list(tmp_path.iterdir()) == []


# --- bad requests ------------------------------------------------------------------------

URL_ESCAPES = ["../evil", "..", ".hidden", "a/b", "a\\b", "", "x" * 129, "nul\x00l", "é"]


def post(url: str, body: object | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    content = content.replace(json.dumps(NEST_970).encode(), b'{"x":' * 970 + b"{}" + b"}" * 970)
    return httpx.post(url, content=content, headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer: dict[str, Any] = response.json()
    assert answer["status"] == "error" and answer["message"]
    if code is not None:
        assert answer["error"] == code
    return answer


@pytest.fixture
def seeded(server: ServerThread, tmp_path: Path) -> Iterator[tuple[ServerThread, Callable[[], dict[str, Any]]]]:
    """A server whose project "p" holds alice; yields it and a snapshot of every project file."""
    store = HttpStore(server.url, project_name="p")
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.25, "m", call_id="seed")

    def snapshot() -> dict[str, Any]:
        files = sorted(p.name for p in tmp_path.iterdir())
        return {"files": files, "records": file_records(tmp_path / "p.json")}

    before = snapshot()
    yield server, snapshot
    assert snapshot() == before  # every bad request left the data as it was
    assert not (tmp_path.parent / "evil.json").exists()


CHARGE = {"project_name": "p", "user": "alice", "cost": 0.1, "model": "m"}
NEST_970 = "<970 levels of nesting>"  # post() sends it as such (json.dumps would recurse)
# LiteLLM's /set_budget with good users before and after a bad one: all or nothing.
SET_BUDGET_WITH_ONE_BAD_USER = [
    {"user_dict": {"alice": {"total_budget": 9}, "bob": {"total_budget": 2}, "zed": bad, "amy": {"total_budget": 3}}}
    for bad in (
        {"total_budget": 1, "duration": 1e-320},
        {"total_budget": 1, "duration": "9" * 400 + "d"},
        {"total_budget": 1, "note": NEST_970},
        {"total_budget": 1, "note": "x" * 70_000},
        {"total_budget": 1e16},
        {"total_budget": 1, "created_at": -1},
        {"total_budget": 1, "model_cost": {"a\x00": 1}},
    )
] + [{"user_dict": {"alice": {"total_budget": 9}, "b\ud800": {"total_budget": 2}}}]


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/charge", b"{not json"),
        ("/v1/charge", b"[1, 2]"),
        ("/v1/charge", b"\xff\xfe"),
        ("/v1/charge", json.dumps(CHARGE).replace("0.1", "NaN").encode()),
        ("/v1/charge", json.dumps(CHARGE).replace("0.1", "Infinity").encode()),
        ("/v1/charge", json.dumps(CHARGE).replace("0.1", "1e400").encode()),
        ("/v1/charge", json.dumps(CHARGE).replace("0.1", "9" * 400).encode()),  # float() overflows
        ("/v1/charge", json.dumps(CHARGE).replace("0.1", "9" * 5000).encode()),  # past int()'s limit
        ("/v1/charge", b"[" * 200_000 + b"]" * 200_000),
        ("/set_budget", b'{"project_name": "p", "user_dict": {"alice": {"total_budget": NaN}}}'),
        ("/set_budget", b'{"project_name": "p", "user_dict": {"alice": {"total_budget": 1, "note": NaN}}}'),
    ],
)
def test_malformed_json_is_refused(seeded: tuple[ServerThread, Any], path: str, raw: bytes) -> None:
    server, _ = seeded
    assert_error(post(server.url + path, raw), 400, "invalid_request")


@pytest.mark.parametrize(
    "change",
    [
        {"cost": "0.1"},
        {"cost": -1},
        {"cost": True},
        {"cost": None},
        {"cost": [1]},
        {"user": ""},
        {"user": 42},
        {"user": None},
        {"model": 5},
        {"call_id": ""},
        {"bogus": 1},
        {"default": {"total_budget": -1, "duration": None}},
        {"default": {"total_budget": 1}},
        {"default": {"total_budget": 1, "duration": "fortnightly"}},
        {"project_name": 7},
    ],
)
def test_bad_charge_fields_are_refused(seeded: tuple[ServerThread, Any], change: dict[str, Any]) -> None:
    server, _ = seeded
    answer = assert_error(post(server.url + "/v1/charge", {**CHARGE, **change}), 400, "invalid_request")
    assert answer["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/reserve", {"user": "alice", "call_id": "c", "amount": 0.1, "ttl": 0}),
        ("/v1/reserve", {"user": "alice", "call_id": "c", "amount": 0.1, "ttl": 5, "mode": "lenient"}),
        ("/v1/reserve", {"user": "alice", "amount": 0.1, "ttl": 5}),
        ("/v1/settle", {"call_id": "seed", "actual_cost": -0.5, "model": "m"}),
        ("/v1/set_budget", {"user": "alice", "total_budget": 1.0, "duration": "1 fortnight"}),
        ("/v1/set_budget", {"user": "alice"}),
        ("/v1/put", {"user": "alice", "record": {"total_budget": "lots"}}),
        ("/v1/put", {"user": "alice", "record": [1]}),
        ("/set_budget", {"user_dict": "everything"}),
        ("/set_budget", {"user_dict": {"alice": {"current_cost": -5}}}),
        ("/set_budget", {"user_dict": {"": {"total_budget": 1}}}),
        ("/set_budget", {}),
        *((path, body) for body in SET_BUDGET_WITH_ONE_BAD_USER for path in ["/set_budget"]),
        ("/v1/put", {"user": "alice", "record": {"total_budget": 1, "note": NEST_970}}),
        ("/v1/put", {"user": "bob", "record": {"total_budget": 1, "duration": 1e-320}}),
        ("/v1/put", {"user": "bob", "record": {"total_budget": 1, "model_cost": {"m" * 2_000_000: 1}}}),
        ("/v1/set_budget", {"user": "bob", "total_budget": 1.0, "duration": 1e-320}),
        ("/v1/set_budget", {"user": "bob", "total_budget": 1.0, "duration": "0." + "0" * 300 + "1s"}),
        ("/v1/set_budget", {"user": "bob", "total_budget": 1.0, "duration": "9" * 400 + "d"}),
        ("/v1/set_budget", {"user": "bob", "total_budget": 1e16}),
        ("/v1/set_budget", {"user": "bob", "total_budget": 1.0, "created_at": 1e15}),
        ("/v1/set_budget", {"user": "\ud800", "total_budget": 1.0}),
        ("/v1/charge", {"user": "alice", "cost": 0.1, "model": "a\x00b"}),
        ("/v1/charge", {"user": "alice", "cost": 0.1, "model": "m", "call_id": "c" * 1025}),
        ("/v1/reserve", {"user": "alice", "call_id": "c", "amount": 0.1, "ttl": 1e12}),
        ("/v1/set_fields", {"user": "alice", "fields": {"duration": 1e-320}}),
    ],
)
def test_bad_fields_on_other_endpoints_are_refused(
    seeded: tuple[ServerThread, Any], path: str, body: dict[str, Any]
) -> None:
    server, _ = seeded
    assert_error(post(server.url + path, {"project_name": "p", **body}), 400, "invalid_request")


@pytest.mark.parametrize("name", URL_ESCAPES)
@pytest.mark.parametrize("path", ["/v1/charge", "/v1/set_budget", "/get_budget", "/set_budget"])
def test_project_names_cannot_escape(seeded: tuple[ServerThread, Any], path: str, name: str) -> None:
    server, _ = seeded
    body = {
        **CHARGE,
        "total_budget": 1.0,
        "default": {"total_budget": 5.0, "duration": None},
        "user_dict": {"x": {"total_budget": 1}},
        "project_name": name,
    }
    if path == "/v1/set_budget":
        body = {"project_name": name, "user": "x", "total_budget": 1.0}
    elif path == "/v1/charge":
        body.pop("total_budget"), body.pop("user_dict")
    assert_error(post(server.url + path, body), 400, "invalid_request")


def test_project_name_rule() -> None:
    assert check_project_name("team-a.prod_1") == "team-a.prod_1"
    for bad in URL_ESCAPES:
        with pytest.raises(ConfigurationError):
            check_project_name(bad)


def test_huge_body_is_refused(seeded: tuple[ServerThread, Any]) -> None:
    server, _ = seeded
    padding = "x" * (MAX_BODY_BYTES + 1)
    body = {"project_name": "p", "user_dict": {"alice": {"total_budget": 1, "note": padding}}}
    assert_error(post(server.url + "/set_budget", body), 413, "request_too_large")
    assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_a_slow_client_gets_a_read_timeout(tmp_path: Path) -> None:
    with ServerThread(directory_stores(tmp_path), read_timeout=0.5) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(
                b"POST /v1/all HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"project_name": '
            )
            answer = client.recv(4096)  # the server answers without waiting for the rest
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"request_timeout" in answer
        assert httpx.get(server.url + "/health").status_code == 200


def test_unknown_paths_and_methods_answer_json(seeded: tuple[ServerThread, Any]) -> None:
    server, _ = seeded
    assert_error(post(server.url + "/v1/nope", CHARGE), 404, "not_found")
    assert_error(httpx.get(server.url + "/v1/charge"), 405, "method_not_allowed")


def test_over_budget_changes_nothing(seeded: tuple[ServerThread, Any]) -> None:
    server, _ = seeded
    body = {"project_name": "p", "user": "alice", "call_id": "big", "amount": 5.0, "ttl": 60}
    answer = assert_error(post(server.url + "/v1/reserve", body), 402, "budget_exceeded")
    assert (answer["user"], answer["spend"], answer["budget"], answer["estimate"]) == ("alice", 0.25, 1.0, 5.0)
    assert_error(post(server.url + "/v1/reset", {"project_name": "p", "user": "bob"}), 404, "unknown_user")


# --- API keys and binding ----------------------------------------------------------------


def test_api_key_is_required(keyed_server: ServerThread, tmp_path: Path) -> None:
    good = HttpStore(keyed_server.url, project_name="p", api_key=KEY)
    good.set_budget("alice", 1.0)
    before = file_records(tmp_path / "p.json")
    wipe = {"project_name": "p", "user_dict": {}}
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}]:
        answer = assert_error(post(keyed_server.url + "/set_budget", wipe, headers), 401, "unauthorized")
        assert "API key" in answer["message"]
    assert file_records(tmp_path / "p.json") == before
    with pytest.raises(ConfigurationError, match="API key"):
        HttpStore(keyed_server.url, project_name="p", api_key="wrong").get("alice")
    assert httpx.get(keyed_server.url + "/health").json()["status"] == "success"  # no key needed
    lower = post(
        keyed_server.url + "/v1/get", {"project_name": "p", "user": "alice"}, {"authorization": f"bearer {KEY}"}
    )
    assert lower.status_code == 200


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", "Bearer \u00e9".encode(), b"Bearer " + b"k" * 5000])
def test_odd_authorization_headers_get_401(keyed_server: ServerThread, value: bytes) -> None:
    port = int(keyed_server.url.rsplit(":", 1)[1])
    body = b'{"project_name": "p", "user_dict": {}}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /set_budget HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
            + value
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"unauthorized"' in answer


def test_api_key_from_environment(keyed_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_BUDGET_API_KEY", KEY)
    store = HttpStore(keyed_server.url, project_name="p")
    store.set_budget("alice", 1.0)
    assert store.get("alice") is not None


def test_without_a_key_only_loopback() -> None:
    for host in ["127.0.0.1", "::1", "localhost", "127.0.0.2"]:
        check_bind(host, None)
    for host in ["0.0.0.0", "::", "192.168.1.10", "example.com"]:
        with pytest.raises(ConfigurationError, match="without an API key"):
            check_bind(host, None)
        check_bind(host, KEY)


# --- store mapping -----------------------------------------------------------------------


def test_single_file_serves_one_named_project(tmp_path: Path) -> None:
    path = tmp_path / "user_cost.json"
    path.write_text(json.dumps({"alice": {"total_budget": 3.0, "current_cost": 1.0}}))
    with pytest.raises(ConfigurationError, match="--project"):
        ProjectStores.from_target(str(path))
    with pytest.raises(ConfigurationError, match="does not exist"):
        ProjectStores.from_target(str(tmp_path / "missing"))
    with ServerThread(ProjectStores.from_target(str(path), project="main")) as running:
        manager = litellm.BudgetManager("main", client_type="hosted", api_base=running.url)
        assert manager.get_current_cost("alice") == 1.0
        with pytest.raises(ConfigurationError, match="serves project 'main' only"):
            HttpStore(running.url, project_name="other").set_budget("bob", 1.0)


def test_directory_target_maps_projects_to_files(tmp_path: Path) -> None:
    (tmp_path / "team.json").write_text(json.dumps({"alice": {"total_budget": 2.0}}))
    with ServerThread(ProjectStores.from_target(str(tmp_path))) as running:
        assert HttpStore(running.url, project_name="team").get("alice")["total_budget"] == 2.0  # type: ignore[index]
        HttpStore(running.url, project_name="new").set_budget("bob", 1.0)
    assert file_records(tmp_path / "new.json")["bob"]["total_budget"] == 1.0


# --- the real command, in a subprocess ---------------------------------------------------


def start_cli_server(directory: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*CLI, "serve", "--store", str(directory), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "loopback only" in line or "need the API key" in line:
            url = next(part for part in " ".join(lines).split() if part.startswith("http://"))
            return process, url
    process.kill()
    raise AssertionError(f"server did not start: {lines} {process.stderr.read() if process.stderr else ''}")


def test_cli_server_graceful_shutdown(tmp_path: Path) -> None:
    process, url = start_cli_server(tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        manager = litellm.BudgetManager("p", client_type="hosted", api_base=url)
        manager.create_budget(1000.0, "alice")
        manager.save_data()
        acknowledged: list[int] = []
        stop = threading.Event()

        def charge_until_refused(worker: int) -> None:
            store = HttpStore(url, project_name="p", retries=0)
            for i in range(100_000):
                if stop.is_set():
                    return
                try:
                    store.charge("alice", 0.01, "m", call_id=f"w{worker}-{i}")
                except StoreUnavailableError:
                    return
                acknowledged.append(1)

        threads = [threading.Thread(target=charge_until_refused, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acknowledged) > 20, timeout=60)  # charges are under way
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.stdout is not None and "shutting down" in process.stdout.read()
    assert len(acknowledged) > 10
    spent = file_records(tmp_path / "p.json")["alice"]["current_cost"]
    assert spent == pytest.approx(0.01 * len(acknowledged))  # every acknowledged charge, no other

    # Restarted on the same directory, the data is there.
    process, url = start_cli_server(tmp_path)
    try:
        assert litellm.BudgetManager("p", client_type="hosted", api_base=url).get_current_cost("alice") == spent
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0


def test_cli_server_with_key_and_refusals(tmp_path: Path) -> None:
    refused = subprocess.run(
        [*CLI, "serve", "--store", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "without an API key" in refused.stderr
    process, url = start_cli_server(tmp_path, "--api-key", KEY)
    try:
        assert httpx.post(url + "/get_budget", json={"project_name": "p"}).status_code == 401
        assert HttpStore(url, project_name="p", api_key=KEY).all() == {}
    finally:
        process.terminate()
        assert process.wait(30) == 0


@pytest.mark.redis
def test_server_over_redis_keeps_projects_apart(redis_server: Any) -> None:
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    with ServerThread(ProjectStores.from_target(redis_server.url)) as running:
        a = HttpStore(running.url, project_name="a")
        b = HttpStore(running.url, project_name="b")
        a.set_budget("alice", 1.0)
        a.charge("alice", 0.5, "m", call_id="c1")
        assert b.get("alice") is None
        manager = litellm.BudgetManager("a", client_type="hosted", api_base=running.url)
        assert manager.get_current_cost("alice") == 0.5
        assert litellm.BudgetManager("b", client_type="hosted", api_base=running.url).user_dict == {}


# --- BudgetGuard over the server ---------------------------------------------------------


# ``register`` (conftest.py) registers a guard for the test.


def test_budget_guard_over_the_server(server: ServerThread, register: Callable[[Any], Any]) -> None:
    from litellm_budget_plugin.guard import BudgetGuard

    manager = BudgetManager("app", client_type="hosted", api_base=server.url)
    manager.create_budget(1.0, "alice")
    manager.create_budget(1e-9, "bob")
    register(BudgetGuard(manager))
    messages = [{"role": "user", "content": "hi"}]
    response = litellm.completion(model="gpt-4o-mini", messages=messages, mock_response="hello", user="alice")
    cost = response._hidden_params["response_cost"]
    deadline = time.monotonic() + 10
    while manager.get_current_cost("alice") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # litellm charges from its logging thread after the call returns
    assert manager.get_current_cost("alice") == pytest.approx(cost) and cost > 0
    assert not HttpStore(server.url, project_name="app").get("alice").get("reservations")  # type: ignore[union-attr]
    with pytest.raises(BudgetExceededError) as info:
        litellm.completion(model="gpt-4o-mini", messages=messages, mock_response="hello", user="bob")
    assert info.value.user == "bob"
    assert manager.get_current_cost("bob") == 0.0


def test_budget_guard_fails_closed_when_the_server_is_down(register: Callable[[Any], Any]) -> None:
    from litellm_budget_plugin.guard import BudgetGuard

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    register(BudgetGuard(HttpStore(url, project_name="app", retries=0)))
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(StoreUnavailableError, match="cannot reach budget server"):
        litellm.completion(model="gpt-4o-mini", messages=messages, mock_response="hello", user="alice")
