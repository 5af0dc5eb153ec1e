"""Keys per project on the budget server (``serve --keys FILE``): each key sees and changes
only its projects, read-only keys change nothing, Basic auth, and bad keys files refused.

Servers run on a free loopback port (tests/server_thread.py) over real file stores; one runs
as ``litellm-budget serve --keys`` in a subprocess. Requests go through sockets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner
from server_thread import ServerThread, directory_stores
from test_server import CLI, file_records, start_cli_server
from waiting import wait_until

from litellm_budget_plugin import ConfigurationError, HttpStore
from litellm_budget_plugin._server_access import Grant, Keys, load_keys, projects_for
from litellm_budget_plugin._server_requests import OPS
from litellm_budget_plugin.cli import EXIT_USAGE, main
from litellm_budget_plugin.server import check_bind, make_app

A_WRITE = "key-a-read-write-0001"  # project "a", read-write
A_READ = "key-a-read-only-00002"  # project "a", read only; in the file as its sha256
EVERY_READ = "key-every-project-read"  # "*", read only
ADMIN = "key-every-project-admin"  # "*", read-write
NEW_KEY = "key-added-by-a-reload"
NEW_ENTRY = {"name": "new", "key": NEW_KEY, "projects": ["a"], "access": "read"}
SECRETS = (A_WRITE, A_READ, EVERY_READ, ADMIN, NEW_KEY)


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS_FILE = {
    "keys": [
        {"name": "a-team", "key": A_WRITE, "projects": ["a"], "access": "read-write"},
        {"name": "a-viewer", "sha256": sha256(A_READ), "projects": ["a"], "access": "read"},
        {"name": "finance", "key": EVERY_READ, "projects": ["*"], "access": "read"},
        {"name": "admin", "key": ADMIN, "projects": ["*"], "access": "read-write"},
    ]
}

# A valid body of every endpoint (besides project_name): refused only for its key.
BODIES: dict[str, dict[str, Any]] = {
    "/get_budget": {},
    "/set_budget": {"user_dict": {"zed": {"total_budget": 1.0}}},
    "/v1/get": {"user": "alice"},
    "/v1/all": {},
    "/v1/set_budget": {"user": "alice", "total_budget": 5.0},
    "/v1/put": {"user": "zed", "record": {"total_budget": 1.0}},
    "/v1/set_fields": {"user": "alice", "fields": {"total_budget": 3.0}},
    "/v1/delete": {"user": "alice"},
    "/v1/reset": {"user": "alice"},
    "/v1/roll": {"user": "alice"},
    "/v1/charge": {"user": "alice", "cost": 0.1, "model": "m"},
    "/v1/reserve": {"user": "alice", "call_id": "c2", "amount": 0.1, "ttl": 60},
    "/v1/settle": {"call_id": "c1", "actual_cost": 0.1, "model": "m"},
    "/v1/release": {"call_id": "c1"},
    "/v1/ledger": {"since": 0},
}
# Written here, not taken from the package: a change to what counts as a read shows up.
READS = {"/get_budget", "/v1/get", "/v1/all", "/v1/ledger"}
WRITES = sorted(set(BODIES) - READS)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(url: str, path: str, project: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
    body = {"project_name": project, **BODIES[path]}
    headers = None if key is None else bearer(key)
    return httpx.post(url + path, json=body, headers=headers, timeout=30, **kwargs)


def write_keys(path: Path, keys: object, mode: int = 0o600) -> Path:
    path.write_text(keys if isinstance(keys, str) else json.dumps(keys))
    path.chmod(mode)
    return path


Snapshot = Callable[[], dict[str, Any]]


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[ServerThread, Snapshot]]:
    """A server with KEYS_FILE whose projects "a" and "b" hold alice (with a hold "c1");
    yields it and a snapshot of every project's records and the store's file names."""
    data = tmp_path / "data"
    data.mkdir()
    keys = load_keys(write_keys(tmp_path / "keys.json", KEYS_FILE))
    with ServerThread(directory_stores(data), keys=keys) as server:
        for project in ("a", "b"):
            store = HttpStore(server.url, project_name=project, api_key=ADMIN)
            store.set_budget("alice", 1.0)
            store.reserve("alice", "c1", 0.2, ttl=600)

        def snapshot() -> dict[str, Any]:
            files = sorted(p.name for p in data.iterdir())
            return {"files": files, **{p: file_records(data / f"{p}.json") for p in ("a", "b")}}

        yield server, snapshot


def test_every_endpoint_has_a_body() -> None:
    assert set(BODIES) == {"/get_budget", "/set_budget", "/v1/ledger"} | {f"/v1/{op}" for op in OPS}


def assert_forbidden(response: httpx.Response, project: str) -> None:
    assert response.status_code == 403, response.text
    answer = response.json()
    assert (answer["status"], answer["error"], answer["project"]) == ("error", "forbidden", project)
    assert repr(project) in answer["message"]


@pytest.mark.parametrize("path", sorted(BODIES))
def test_a_key_cannot_use_another_project(keyed: tuple[ServerThread, Snapshot], path: str) -> None:
    server, snapshot = keyed
    before = snapshot()
    for key in (A_WRITE, A_READ):
        assert_forbidden(call(server.url, path, "b", key), "b")
        # a project that does not exist gets the same answer: nothing tells them apart
        missing = call(server.url, path, "nowhere", key)
        assert_forbidden(missing, "nowhere")
        existing = call(server.url, path, "b", key).json()
        assert missing.json() == {
            **existing,
            "project": "nowhere",
            "message": existing["message"].replace("'b'", "'nowhere'"),
        }
    assert snapshot() == before
    # the same request is good: with a key for "b" it is answered
    assert call(server.url, path, "b", ADMIN).status_code == 200


@pytest.mark.parametrize("path", WRITES)
def test_read_only_keys_change_nothing(keyed: tuple[ServerThread, Snapshot], path: str) -> None:
    server, snapshot = keyed
    before = snapshot()
    for key, project in [(A_READ, "a"), (EVERY_READ, "a"), (EVERY_READ, "b"), (EVERY_READ, "new")]:
        answer = call(server.url, path, project, key)
        assert_forbidden(answer, project)
        assert "may not change" in answer.json()["message"]
    assert snapshot() == before
    assert call(server.url, path, "a", A_WRITE).status_code == 200  # the key of "a" may


@pytest.mark.parametrize("path", sorted(READS - {"/v1/ledger"}))
def test_read_only_keys_read(keyed: tuple[ServerThread, Snapshot], path: str) -> None:
    server, snapshot = keyed
    before = snapshot()
    for key, project in [(A_READ, "a"), (EVERY_READ, "a"), (EVERY_READ, "b"), (A_WRITE, "a")]:
        answer = call(server.url, path, project, key)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "success"
        assert '"total_budget":1.0' in answer.text
    # every project, even one that does not exist: read as empty, and not created
    assert call(server.url, path, "new", EVERY_READ).status_code == 200
    assert snapshot() == before


def test_read_only_keys_read_the_ledger(keyed: tuple[ServerThread, Snapshot]) -> None:
    server, _snapshot = keyed
    assert call(server.url, "/v1/charge", "a", A_WRITE).status_code == 200
    for key in (A_READ, EVERY_READ, A_WRITE):
        answer = call(server.url, "/v1/ledger", "a", key)
        assert answer.status_code == 200, answer.text
        lines = answer.text.splitlines()
        assert len(lines) == 2 and '"alice"' in lines[0] and lines[-1] == '{"end":1}'


def test_dashboard_and_metrics_show_only_the_keys_projects(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    keys = load_keys(write_keys(tmp_path / "keys.json", KEYS_FILE))
    with ServerThread(directory_stores(data), keys=keys, metrics=True) as server:
        for project in ("a", "b"):
            HttpStore(server.url, project_name=project, api_key=ADMIN).set_budget(f"user-of-{project}", 1.0)
        for key in (A_WRITE, A_READ):
            page = httpx.get(f"{server.url}/dashboard", auth=("anyone", key))
            assert page.status_code == 200 and "user-of-a" in page.text and "user-of-b" not in page.text
            assert ">b<" not in page.text and "project=b" not in page.text  # not even listed
            assert_forbidden(httpx.get(f"{server.url}/dashboard?project=b", auth=("anyone", key)), "b")
            assert_forbidden(httpx.get(f"{server.url}/dashboard?project=nowhere", auth=("anyone", key)), "nowhere")
            metrics = httpx.get(f"{server.url}/metrics", headers=bearer(key))
            assert metrics.status_code == 200 and 'project="a"' in metrics.text and 'project="b"' not in metrics.text
        everything = httpx.get(f"{server.url}/metrics", headers=bearer(EVERY_READ)).text
        assert 'subject="user-of-a"' in everything and 'subject="user-of-b"' in everything
        page = httpx.get(f"{server.url}/dashboard?project=b", auth=("anyone", EVERY_READ))
        assert page.status_code == 200 and "user-of-b" in page.text


def test_http_store_reports_the_refusal(keyed: tuple[ServerThread, Snapshot]) -> None:
    server, _ = keyed
    with pytest.raises(ConfigurationError, match="may not use project 'b'"):
        HttpStore(server.url, project_name="b", api_key=A_WRITE).get("alice")
    with pytest.raises(ConfigurationError, match="may not change project 'a'"):
        HttpStore(server.url, project_name="a", api_key=A_READ).charge("alice", 0.1, "m")
    assert HttpStore(server.url, project_name="a", api_key=A_READ).get("alice") is not None


def test_wrong_or_missing_keys_get_401_with_a_bearer_challenge(keyed: tuple[ServerThread, Snapshot]) -> None:
    server, snapshot = keyed
    before = snapshot()
    for headers in [{}, bearer("wrong-key-wrong-key"), bearer(sha256(A_READ)), {"Authorization": f"Basic {A_WRITE}"}]:
        answer = httpx.post(server.url + "/v1/all", json={"project_name": "a"}, headers=headers)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
        assert answer.headers.get_list("WWW-Authenticate") == ['Bearer realm="litellm-budget"']
    for auth in [("user", "wrong"), ("user", ""), (A_WRITE, "x")]:  # the key is the password, not the user
        assert httpx.get(server.url + "/dashboard", auth=auth).status_code == 401
    assert snapshot() == before
    assert httpx.get(server.url + "/health").status_code == 200  # no key needed


def test_basic_auth_opens_the_dashboard_only(keyed: tuple[ServerThread, Snapshot]) -> None:
    """A browser resends Basic credentials by itself, to any request to the server, a forged
    form's among them: they open the dashboard (GET), never the API."""
    server, snapshot = keyed
    for user in ("browser", ""):
        page = httpx.get(server.url + "/dashboard", auth=(user, A_READ))
        assert page.status_code == 200 and "alice" in page.text
    before = snapshot()
    for path in ("/v1/get", "/v1/charge", "/set_budget"):
        answer = call(server.url, path, "a", auth=("browser", A_WRITE))
        assert answer.status_code == 401, path
    assert snapshot() == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Content-Type": "text/plain", "Origin": "http://localhost:3000"},
    ],
)
def test_a_page_of_another_site_changes_nothing(tmp_path: Path, headers: dict[str, str]) -> None:
    """Cross-site request forgery: a form on another site posting to a server that needs no key
    (loopback), or whose key the browser holds, is refused before anything is read."""
    with ServerThread(directory_stores(tmp_path)) as server:
        body = json.dumps({"project_name": "p", "user_dict": {"mallory": {"total_budget": 1e9}}})
        answer = httpx.post(server.url + "/set_budget", content=body, headers=headers)
        assert answer.status_code == 403 and answer.json()["error"] == "cross_site"
        assert not list(tmp_path.iterdir())
        same_origin = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
        assert httpx.post(server.url + "/set_budget", content=body, headers=same_origin).status_code == 200


def test_one_api_key_still_opens_every_project(tmp_path: Path) -> None:
    with ServerThread(directory_stores(tmp_path), api_key=ADMIN) as server:
        for project in ("a", "b"):
            assert call(server.url, "/v1/set_budget", project, ADMIN).status_code == 200
        assert call(server.url, "/v1/get", "a", ADMIN).status_code == 200
        assert httpx.get(server.url + "/dashboard", auth=("any", ADMIN)).status_code == 200
        assert call(server.url, "/v1/get", "a", A_WRITE).status_code == 401
    keys = load_keys(write_keys(tmp_path / "keys.json", KEYS_FILE))
    with pytest.raises(ConfigurationError, match="not both"):
        make_app(directory_stores(tmp_path), api_key=ADMIN, keys=keys)


# --- the grant ---------------------------------------------------------------------------


def test_grants() -> None:
    some = Grant("t", frozenset({"a", "b"}), writes=False)
    assert some.visible(["c", "b", "a"]) == ["b", "a"]
    assert some.can_read("a") and not some.can_write("a") and not some.can_read("c")
    every = Grant("t", frozenset({"*"}), writes=True)
    assert every.visible(["c", "b"]) == ["c", "b"] and every.can_write("zz")


def test_keys_let_the_server_leave_loopback(tmp_path: Path) -> None:
    keys = load_keys(write_keys(tmp_path / "keys.json", KEYS_FILE))
    check_bind("0.0.0.0", keys)
    with pytest.raises(ConfigurationError, match="without an API key"):
        check_bind("0.0.0.0", None)


# --- bad keys files ----------------------------------------------------------------------


def entry(**changes: Any) -> dict[str, Any]:
    return {"name": "e", "key": "k" * 16, "projects": ["a"], "access": "read", **changes}


BAD_FILES: list[tuple[object, str]] = [
    ("{not json", "not valid JSON"),
    ([entry()], '"keys"'),
    ({"keys": [entry()], "extra": 1}, '"keys"'),
    ({"keys": {}}, '"keys"'),
    ({"keys": []}, "no keys"),
    ({"keys": [entry(), "sk"]}, r"keys\[1\]: must be an object"),
    ({"keys": [entry(), entry(name="short", key="k" * 15)]}, r"keys\[1\] \('short'\): key must be 16"),
    ({"keys": [entry(key="k" * 15 + " ")]}, r"keys\[0\].*printable ASCII"),
    ({"keys": [entry(key=16)]}, r"keys\[0\].*key must be"),
    ({"keys": [entry(), entry(name="f")]}, r"keys\[1\] \('f'\): the same key as 'e'"),
    ({"keys": [entry(), entry(name="f", key=None, sha256=sha256("k" * 16))]}, "the same key as 'e'"),
    ({"keys": [entry(), entry(key="j" * 16)]}, r"keys\[1\] \('e'\): another entry has this name"),
    ({"keys": [entry(access="write")]}, "access must be one of 'read', 'read-write'"),
    ({"keys": [entry(access=None)]}, "access must be one of"),
    ({"keys": [entry(projects=["a", "../b"])]}, "invalid project_name '../b'"),
    ({"keys": [entry(projects=[".hidden"])]}, "invalid project_name"),
    ({"keys": [entry(projects=[3])]}, "project_name must be a string"),
    ({"keys": [entry(projects=[])]}, "projects must be a non-empty list"),
    ({"keys": [entry(projects="a")]}, "projects must be a non-empty list"),
    ({"keys": [entry(projects=["*", "a"])]}, "must stand alone"),
    ({"keys": [entry(sha256=sha256("x"))]}, 'exactly one of "key" and "sha256"'),
    ({"keys": [{k: v for k, v in entry().items() if k != "key"}]}, 'exactly one of "key" and "sha256"'),
    ({"keys": [entry(key=None, sha256="ab" * 31)]}, "sha256 must be 64 hex digits"),
    ({"keys": [entry(acess="read")]}, "unknown field.*'acess'"),
    ({"keys": [entry(name="")]}, "name must be a non-empty string"),
]


def _clean(keys: object) -> object:
    """``key=None`` in an entry above means: no "key" field."""
    if isinstance(keys, dict) and isinstance(keys.get("keys"), list):
        entries = [
            {k: v for k, v in e.items() if v is not None or k != "key"} if isinstance(e, dict) else e
            for e in keys["keys"]
        ]
        return {**keys, "keys": entries}
    return keys


@pytest.mark.parametrize(("keys", "message"), BAD_FILES)
def test_bad_keys_files_are_refused(tmp_path: Path, keys: object, message: str) -> None:
    path = write_keys(tmp_path / "keys.json", _clean(keys))
    with pytest.raises(ConfigurationError, match=message) as info:
        load_keys(path)
    assert str(path) in str(info.value)
    assert "k" * 16 not in str(info.value) and "j" * 16 not in str(info.value)  # never a key
    result = CliRunner().invoke(main, ["serve", "--store", str(tmp_path), "--keys", str(path), "--port", "0"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert str(path) in result.stderr and "listening" not in result.output


def test_keys_file_permissions_and_links(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_keys(tmp_path / "keys.json", KEYS_FILE, mode=0o666)
    with pytest.raises(ConfigurationError, match="anyone may write it"):
        load_keys(path)
    caplog.set_level(logging.WARNING)
    path.chmod(0o644)
    assert len(load_keys(path)) == 4
    assert "anyone may read" in caplog.text and str(path) in caplog.text
    caplog.clear()
    hashed = {"keys": [{"sha256": sha256(ADMIN), "projects": ["*"], "access": "read"}]}
    assert load_keys(write_keys(tmp_path / "hashed.json", hashed, mode=0o644)).grant(ADMIN.encode()) is not None
    assert "anyone may read" not in caplog.text  # digests only: nothing secret to read
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "hashed.json")  # how Kubernetes mounts secrets
    assert len(load_keys(link)) == 1
    with pytest.raises(ConfigurationError, match="cannot read it"):
        load_keys(tmp_path / "missing.json")
    with pytest.raises(ConfigurationError, match="not a regular file"):
        load_keys(tmp_path)


def test_keys_and_api_key_together_are_refused(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.json", KEYS_FILE)
    for args, env in [(["--api-key", ADMIN], {}), ([], {"LITELLM_BUDGET_API_KEY": ADMIN})]:
        result = CliRunner().invoke(main, ["serve", "--store", str(tmp_path), "--keys", str(path), *args], env=env)
        assert result.exit_code == EXIT_USAGE and "not both" in result.stderr


# --- the real command --------------------------------------------------------------------


def test_cli_server_with_a_keys_file(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.json", KEYS_FILE)
    data = tmp_path / "data"
    data.mkdir()
    process, url = start_cli_server(data, "--keys", str(path), "--host", "127.0.0.1")
    assert process.stdout is not None and process.stderr is not None
    errors = process.stderr
    logged: list[str] = []  # the server's stderr as it comes: a SIGHUP is handled when it is logged
    reader = threading.Thread(target=lambda: logged.extend(iter(errors.readline, "")), daemon=True)
    reader.start()
    try:
        assert call(url, "/v1/set_budget", "a", A_WRITE).status_code == 200
        assert_forbidden(call(url, "/v1/set_budget", "b", A_WRITE), "b")
        assert_forbidden(call(url, "/v1/charge", "a", A_READ), "a")
        assert call(url, "/v1/get", "a", A_READ).json()["result"]["total_budget"] == 5.0
        assert call(url, "/v1/get", "a").status_code == 401
        # SIGHUP reads the file again: a new key works, a removed one is refused
        write_keys(path, {"keys": [*KEYS_FILE["keys"][1:], NEW_ENTRY]})
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: call(url, "/v1/get", "a", NEW_KEY).status_code == 200, timeout=30)
        assert call(url, "/v1/get", "a", A_WRITE).status_code == 401
        # a bad file changes nothing; the good one sent after it shows it was handled
        write_keys(path, "{broken")
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: any("keys not reloaded" in line for line in logged), timeout=30)
        write_keys(path, KEYS_FILE)
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: call(url, "/v1/get", "a", A_WRITE).status_code == 200, timeout=30)
        assert call(url, "/v1/get", "a", NEW_KEY).status_code == 401
    finally:
        process.terminate()
        stdout = process.stdout.read()  # stderr is the reader's
        process.wait(timeout=30)
        reader.join(30)
    stderr = "".join(logged)
    assert process.returncode == 0, stderr
    assert sorted(p.name for p in data.iterdir() if p.suffix == ".json") == ["a.json"]
    output = stdout + stderr
    assert "key 'a-team' refused writing project 'b'" in output  # refusals are logged by key name
    assert "keys not reloaded" in stderr and "not valid JSON" in stderr
    assert stdout.count("keys reloaded: ") == 2
    assert not any(secret in output for secret in SECRETS)
    refused = subprocess.run(
        [*CLI, "serve", "--store", str(data), "--keys", str(tmp_path / "nope.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == EXIT_USAGE and "nope.json" in refused.stderr


def test_a_bad_reload_keeps_the_keys(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.json", KEYS_FILE)
    keys = load_keys(path)
    write_keys(path, {"keys": [NEW_ENTRY, {**NEW_ENTRY, "name": "twice"}]})
    with pytest.raises(ConfigurationError, match="the same key"):
        keys.reload()
    assert keys.grant(A_WRITE.encode()) is not None and keys.grant(NEW_KEY.encode()) is None
    write_keys(path, {"keys": [NEW_ENTRY]})
    assert keys.reload() == f"1 key(s) from {path}"
    assert keys.grant(A_WRITE.encode()) is None and keys.grant(NEW_KEY.encode()) is not None
    with pytest.raises(ConfigurationError, match="no file"):
        Keys.single(ADMIN).reload()


def test_the_readme_example_is_a_keys_file(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- keys-example -->\s*```json\n(.*?)```", text, re.S)
    assert match is not None, "the README lost its keys example"
    keys = load_keys(write_keys(tmp_path / "keys.json", match.group(1)))
    search = keys.grant(b"sk-search-0123456789abcdef")
    finance = keys.grant(b"sk-finance-0123456789abcdef")  # given as its sha256
    assert search is not None and search.can_write("chat") and not search.can_read("other")
    assert finance is not None and finance.can_read("other") and not finance.can_write("search")


# --- the grant of a request, for pages that list projects --------------------------------


def test_projects_for_a_request(tmp_path: Path) -> None:
    keys = load_keys(write_keys(tmp_path / "keys.json", KEYS_FILE))
    names = ["b", "a", "c"]
    keyed_app = make_app(directory_stores(tmp_path), keys=keys)
    cases = [
        (keyed_app, bearer(A_READ), ["a"]),
        (keyed_app, {"Authorization": "Basic " + base64.b64encode(f"me:{A_WRITE}".encode()).decode()}, ["a"]),
        (keyed_app, bearer(EVERY_READ), names),
        (keyed_app, {}, []),  # unauthenticated (as on /health): nothing
        (keyed_app, bearer("wrong-key-wrong-key"), []),
        (make_app(directory_stores(tmp_path), api_key=ADMIN), bearer(ADMIN), names),
        (make_app(directory_stores(tmp_path), api_key=ADMIN), {}, []),
        (make_app(directory_stores(tmp_path)), {}, names),  # no key at all: loopback, everything
    ]
    for app, headers, visible in cases:
        request = make_mocked_request("GET", "/dashboard", headers=headers, app=app)
        assert projects_for(request).visible(names) == visible, headers
    assert projects_for(make_mocked_request("GET", "/", headers=bearer(A_READ), app=keyed_app)).writes is False
