"""The fuzz suite (see fuzz_checks.py) on bytes from outside: request bodies sent to the budget
server, and store files written by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fuzz_checks import OPS, T0, check_outcome, encode, fuzz_server, money_ok, owner_of, report, run, seed
from fuzz_strategies import (
    SEEDED_USERS,
    Arguments,
    examples,
    good_records,
    hostile_text,
    hostile_users,
    records,
    tally,
    tally_input,
)
from hypothesis import given
from hypothesis import strategies as st
from server_thread import ServerThread

from litellm_budget_plugin import FileStore
from litellm_budget_plugin.errors import BudgetPluginError, StoreCorruptError
from litellm_budget_plugin.stores.http import HttpStore

__all__ = ["fuzz_server", "report"]  # fixtures, used here


# --- the budget server's endpoints, sent directly ------------------------------------------------

ENDPOINTS = ["/get_budget", "/set_budget", *(f"/v1/{op}" for op in [*OPS, "all"] if op != "admit")]
CONTENT_TYPES = ["application/json", "text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data"]


def server_state(client: httpx.Client, folder: Path) -> tuple[list[str], dict[str, Any]]:
    answer = client.post("/v1/all", json={"project_name": "ops"}).json()
    return sorted(p.name for p in folder.iterdir()), answer["result"]


def check_answer(target: str, response: httpx.Response) -> None:
    outcome = f"http {response.status_code}"
    tally(target, outcome)
    assert response.status_code < 500, f"{target}: {response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    answer = response.json()
    if response.status_code >= 400:
        assert answer["status"] == "error" and answer["message"], answer


@pytest.fixture(scope="module")
def client(fuzz_server: tuple[ServerThread, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server[0].url, timeout=60) as made:
        yield made


@pytest.fixture(scope="module")
def ops_store(fuzz_server: tuple[ServerThread, Path]) -> Iterator[HttpStore]:
    store = HttpStore(fuzz_server[0].url, project_name="ops", retries=0)
    yield store
    store.close()


project_names = st.one_of(*[st.just("ops")] * 4, hostile_text, st.sampled_from(["../evil", "a/b", 7, None]))


@st.composite
def v1_bodies(draw: st.DrawFn) -> tuple[str, Arguments]:
    """An endpoint of /v1 and a body: the operation's fields, fuzzed, some left out, one more."""
    op = draw(st.sampled_from([op for op in OPS if op != "admit"]))
    fields = draw(OPS[op][0])
    sent = Arguments({"project_name": draw(project_names)})
    sent.update((k, v) for k, v in fields.items() if draw(st.integers(0, 7)) or k in ("user", "call_id"))
    if draw(st.integers(0, 9)) == 0:
        sent[draw(hostile_text)] = draw(st.integers())
    odd_shape = len(sent) != len(fields) + 1 or sent["project_name"] != "ops"
    sent.hostile = fields.hostile | ({"body"} if odd_shape else set())
    return f"/v1/{op}", sent


@examples(120)
@given(sent=v1_bodies())
def test_v1_endpoints(
    client: httpx.Client, ops_store: HttpStore, fuzz_server: tuple[ServerThread, Path], sent: Any
) -> None:
    path, body = sent
    tally_input("http v1", body)
    seed(ops_store)
    files_before, before = server_state(client, fuzz_server[1])
    raw = encode(body)
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    check_answer(f"http {path.split('/')[1]}", response)
    files_after, after = server_state(client, fuzz_server[1])
    if response.status_code >= 400:
        assert (files_after, after) == (files_before, before), f"{path} answered {response.status_code}, changed data"
    else:
        body = json.loads(raw)  # as the server read it (a Decimal was sent as its repr)
        who = body.get("user") or owner_of(before, body.get("call_id"))
        check_outcome(path, None, before, after, who)


user_dicts = st.one_of(
    st.dictionaries(st.sampled_from([*SEEDED_USERS, "dave"]), good_records, max_size=4),
    st.dictionaries(
        st.one_of(st.sampled_from(SEEDED_USERS), hostile_text), st.one_of(good_records, records), max_size=4
    ),
    st.just("everything"),
    st.none(),
)


@examples(60)
@given(user_dict=user_dicts, project=project_names)
def test_litellm_set_budget(
    client: httpx.Client, ops_store: HttpStore, fuzz_server: tuple[ServerThread, Path], user_dict: Any, project: Any
) -> None:
    """LiteLLM's save replaces the whole project, or changes nothing."""
    seed(ops_store)
    files_before, before = server_state(client, fuzz_server[1])
    body = encode({"project_name": project, "user_dict": user_dict})
    response = client.post("/set_budget", content=body, headers={"Content-Type": "application/json"})
    check_answer("http set_budget (LiteLLM)", response)
    files_after, after = server_state(client, fuzz_server[1])
    if response.status_code >= 400:
        assert (files_after, after) == (files_before, before)
    elif project == "ops":
        assert sorted(after) == sorted(user_dict)
        for record in after.values():
            money_ok(record)


@examples(80)
@given(
    path=st.sampled_from([*ENDPOINTS, "/v1/nope", "/", "/v1/"]),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]),
    content_type=st.sampled_from(CONTENT_TYPES),
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b'"x"',
                b"{}",
                b'{"project_name": "ops"}',
                b'{"project_name": "ops", "user": "alice", "cost": 1e999, "model": "m"}',
                b'{"project_name": "ops", "user": "alice", "cost": -0, "model": "m"}',
                b'{"project_name": "ops", "user": "al\\ud800", "total_budget": 1}',
                b'{"project_name": "ops", "project_name": "../x"}',
                b"\xef\xbb\xbf{}",
                b"{" * 100_000,
                b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                b'{"project_name": "ops", "user": "' + b"x" * 2_000_000 + b'"}',
                b'{"project_name": "ops", "x": "' + b"x" * (9 * 1024 * 1024) + b'"}',  # past the largest body
            ]
        ),
    ),
)
def test_raw_bodies(
    client: httpx.Client,
    ops_store: HttpStore,
    fuzz_server: tuple[ServerThread, Path],
    path: str,
    method: str,
    content_type: str,
    raw: bytes,
) -> None:
    """Bytes that are not a request we know: a 4xx in JSON, and nothing changed."""
    seed(ops_store)
    state = server_state(client, fuzz_server[1])
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.request(method, path, content=raw, headers=headers)
    check_answer("http raw", response)
    if response.status_code >= 400:
        assert server_state(client, fuzz_server[1]) == state


# --- the store's files, written by hand -------------------------------------------------------

GOOD_ALICE = {
    "total_budget": 10.0,
    "current_cost": 1.0,
    "model_cost": {"m": 1.0},
    "created_at": T0,
    "last_updated_at": T0,
}

not_json = st.one_of(
    st.binary(max_size=100),
    st.sampled_from(
        [
            b"[1]",
            b"null",
            b'"x"',
            b"{",
            b'{"alice": ',
            b"\xff\xfe{}",
            b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        ]
    ),
)
journal_lines = st.lists(
    st.one_of(
        st.builds(lambda u, r: {"u": u, "r": r}, st.one_of(st.just("mallory"), hostile_text), records),
        # "t" only says which of the previous record's call ids to keep: a bad one is not
        # what this fuzzes (a record refused for it alone reads fine once folded)
        st.builds(lambda r, a: {"u": "mallory", "r": r, "t": T0, "a": a}, records, records),
        st.sampled_from([{"u": 1, "r": {}}, {"r": {}}, [], "x", {"u": "mallory", "r": None}]),
    ),
    max_size=4,
)


@examples(80)
@given(
    snapshot=st.one_of(hostile_users.map(lambda users: encode({**users, "alice": GOOD_ALICE})), not_json),
    journal=st.one_of(st.none(), journal_lines.map(lambda lines: b"".join(encode(x) + b"\n" for x in lines)), not_json),
)
def test_store_files(tmp_path_factory: pytest.TempPathFactory, snapshot: bytes, journal: bytes | None) -> None:
    """A file we cannot read is refused whole and left as it is; a bad record is refused for
    its user only, kept through every rewrite, and every other user reads and writes."""
    path = tmp_path_factory.mktemp("fuzz-file") / "user_cost.json"
    path.write_bytes(snapshot)
    journal_path = path.with_name(path.name + ".journal")
    if journal is not None:
        journal_path.write_bytes(journal)
    files = {p: p.read_bytes() for p in (path, journal_path) if p.exists()}
    opened: list[FileStore] = []
    exc = run("file format: open", lambda: opened.append(FileStore(path)))
    if exc is not None:
        assert isinstance(exc, StoreCorruptError), exc
        assert not _readable(snapshot, journal), f"the whole store was refused for a bad record: {exc}"
        assert {p: p.read_bytes() for p in files} == files, "a file we could not read was changed"
        return
    store = opened[0]
    store.clock = lambda: T0  # type: ignore[method-assign]
    try:
        listed = store.all()
        left_out = [
            user for user, deleted in _users_in(snapshot, journal).items() if user not in listed and not deleted
        ]
        for user in left_out:
            exc = run("file format: read a user left out", lambda user=user: store.get(user))
            assert exc is not None
        for record in listed.values():
            money_ok(record)
        alice = listed.get("alice", {"current_cost": 0.0})
        default = {"total_budget": None, "duration": None}
        assert run("file format: write", lambda: store.charge("alice", 0.5, "m", default=default)) is None
        listed = store.all()
        store.compact()
    finally:
        store.close()
    reopened = FileStore(path)
    try:
        again = reopened.all()
        assert again == listed  # the bad records are still there, still left out
        assert again["alice"]["current_cost"] == alice["current_cost"] + 0.5
        for user in left_out:
            with pytest.raises(BudgetPluginError):
                reopened.get(user)
    finally:
        reopened.close()


def _readable(snapshot: bytes, journal: bytes | None) -> bool:
    """Whether the files are JSON of the right shape: an object of users, journal lines
    naming a user each (whatever the records in them)."""
    try:
        return all(isinstance(user, str) for user in _users_in(snapshot, journal))
    except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
        return False


def _users_in(snapshot: bytes, journal: bytes | None) -> dict[str, bool]:
    """The user ids the files name (those a reader may list or refuse), each with whether the
    journal's last word on it is a deletion; the store opened the files, so the snapshot is
    JSON and each complete journal line names a user."""
    snapshot_users = json.loads(snapshot or b"{}")
    if not isinstance(snapshot_users, dict):
        raise TypeError("not an object of users")
    users = dict.fromkeys(snapshot_users, False)
    journal = journal or b""
    for line in journal[: journal.rfind(b"\n") + 1].splitlines():
        entry = json.loads(line)
        users[entry["u"]] = entry.get("r") is None and "t" not in entry
    return users


@pytest.mark.parametrize("appended", [None, [], "x", 5])
def test_a_journal_line_refused_stays_refused_once_folded(tmp_path: Path, appended: object) -> None:
    """Found by the fuzz suite: a line whose appended call ids ("a") were not an object was
    refused, then folded into the snapshot without them, and read back as a valid record
    (here one with no limit)."""
    path = tmp_path / "user_cost.json"
    path.write_text(json.dumps({"alice": {"total_budget": 10.0}}))
    path.with_name("user_cost.json.journal").write_text(json.dumps({"u": "m", "r": {}, "t": T0, "a": appended}) + "\n")
    for _ in range(2):
        store = FileStore(path)
        try:
            assert list(store.all()) == ["alice"]
            with pytest.raises(StoreCorruptError, match="'m'"):
                store.get("m")
            store.charge("alice", 0.5, "x")
            store.compact()  # the fold writes the refused record back as it was read
        finally:
            store.close()
