"""The fuzz suite: hostile inputs to every entry, and what must hold whatever they are.

Every store operation, the budget server's endpoints, the store's files, LiteLLM's
``BudgetManager`` methods and the CLI get values from ``fuzz_strategies`` (valid ones now and
then, hostile ones mostly). Whatever the input, the outcome is one of two:

- a documented error (``ConfigurationError``, a budget refusal, ``UnknownUserError``, a
  ``StoreError``; over HTTP a 4xx with a JSON error, never a 500; from the CLI exit code 1, 2
  or 3 with a message) and the data exactly as it was;
- success, and every other user's record exactly as it was.

Money in every record stays finite and not negative. The CI run is short (a fixed set of
examples per property); ``FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py`` runs longer. The
figures (inputs per target, outcome classes) are printed at the end of the module and written to
``fuzz_report.json`` in pytest's base temporary folder (``$FUZZ_REPORT`` names another file).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fuzz_strategies import (
    SEEDED_USERS,
    T0,
    TALLY,
    VALID,
    Arguments,
    amounts,
    arguments,
    durations,
    examples,
    good_records,
    hostile_text,
    records,
    tally,
    tally_input,
    timestamps,
)
from hypothesis import given
from hypothesis import strategies as st
from server_thread import ServerClock, ServerThread, directory_stores

from litellm_budget_plugin import BudgetManager, FileStore
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.cli import main as cli
from litellm_budget_plugin.errors import BudgetPluginError, BudgetRefusal, ConfigurationError, StoreCorruptError
from litellm_budget_plugin.stores import BudgetStore
from litellm_budget_plugin.stores.http import HttpStore

SEED: dict[str, dict[str, Any]] = {
    "alice": {
        "total_budget": 10.0,
        "current_cost": 1.0,
        "model_cost": {"m": 1.0},
        "duration": 1.0,
        "created_at": T0 - 3600,
        "last_updated_at": T0 - 3600,
        "applied": {"seed-a": T0 - 60},
    },
    "bob": {  # the user with calls in flight
        "total_budget": 2.0,
        "current_cost": 0.25,
        "model_cost": {"gpt-4o": 0.25},
        "created_at": T0 - 10,
        "last_updated_at": T0 - 10,
        "reservations": {
            "held-b1": {"amount": 0.5, "expires_at": T0 + 600},
            "held-b2": {"amount": 1.0, "expires_at": T0 + 600},
        },
    },
    "carol": {
        "total_budget": None,
        "current_cost": 0.0,
        "model_cost": {},
        "created_at": T0,
        "last_updated_at": T0,
        "team": {"name": "t", "tags": [1, "x", None]},
    },
}
DOCUMENTED = (BudgetPluginError, BudgetRefusal)


# --- the tally --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Print and write the figures of this run: inputs per target and outcome class."""
    TALLY.clear()
    yield
    targets: dict[str, dict[str, int]] = {}
    for (target, outcome), count in sorted(TALLY.items()):
        targets.setdefault(target, {})[outcome] = count
    answers = {key: n for key, n in TALLY.items() if not key[1].startswith("(") and key[1] != "OTHER USERS CHANGED"}
    summary = {
        "calls": sum(answers.values()),  # one per call made with fuzzed input (a file: open, reads, a write)
        "inputs_all_valid": sum(n for (_, o), n in TALLY.items() if o == "(input all valid)"),
        "raw_exceptions": sum(n for (_, o), n in TALLY.items() if o.startswith("RAW")),
        "http_500": sum(n for (_, o), n in TALLY.items() if o == "http 500"),
        "other_users_changed": sum(n for (_, o), n in TALLY.items() if o == "OTHER USERS CHANGED"),
        "targets": targets,
    }
    path = Path(os.environ.get("FUZZ_REPORT") or tmp_path_factory.getbasetemp() / "fuzz_report.json")
    path.write_text(json.dumps(summary, indent=1))
    print(f"\nfuzz report ({path}):\n{json.dumps(summary, indent=1)}")


def run(target: str, action: Callable[[], object], also: type[Exception] | None = None) -> BaseException | None:
    """Call ``action``; tally its outcome; fail on an exception that is not documented
    (``also``: one more that is, e.g. ``KeyError`` for a lookup in a mapping)."""
    try:
        action()
    except DOCUMENTED as exc:
        tally(target, type(exc).__name__)
        return exc
    except Exception as exc:
        if also is not None and type(exc) is also:
            tally(target, f"{type(exc).__name__} (documented here)")
            return exc
        tally(target, f"RAW {type(exc).__name__}")
        raise AssertionError(f"{target}: raw {type(exc).__name__}: {exc!r}"[:2000]) from exc
    tally(target, "ok")
    return None


# --- what must hold of the data -----------------------------------------------------------


def money_ok(record: UserRecord) -> None:
    amounts_in = [record["current_cost"], *record["model_cost"].values(), record.get("overrun_cost", 0.0)]
    amounts_in += [held["amount"] for held in record.get("reservations", {}).values()]
    if record["total_budget"] is not None:
        amounts_in.append(record["total_budget"])
    for amount in amounts_in:
        assert isinstance(amount, int | float) and not isinstance(amount, bool), record
        assert math.isfinite(amount) and amount >= 0, record


def check_outcome(target: str, exc: BaseException | None, before: dict[str, Any], after: dict[str, Any], who: object):
    """After an error nothing changed; after a success only ``who``'s record did."""
    for record in after.values():
        money_ok(record)
    if exc is not None:
        assert after == before, f"{target} failed with {exc!r} and changed the data"
        return
    others_before = {u: r for u, r in before.items() if u != who}
    others_after = {u: r for u, r in after.items() if u != who}
    if others_after != others_before:
        tally(target, "OTHER USERS CHANGED")
    assert others_after == others_before, f"{target} changed users other than {who!r}"


def seed(store: BudgetStore) -> None:
    for user in list(store.all()):
        store.delete(user)
    for user, record in SEED.items():
        store.put(user, record)  # type: ignore[arg-type]


def owner_of(records: dict[str, UserRecord], call_id: object) -> str | None:
    for user, record in records.items():
        if isinstance(call_id, str) and call_id in record.get("reservations", {}):
            return user
    return None


# --- every store operation, on each store -----------------------------------------------------

OPS: dict[str, tuple[st.SearchStrategy[dict[str, Any]], Callable[[BudgetStore, dict[str, Any]], object]]] = {
    "set_budget": (
        arguments(user="user", total_budget="budget", duration="duration", created_at="created_at"),
        lambda s, a: s.set_budget(a["user"], a["total_budget"], a["duration"], a["created_at"]),
    ),
    "put": (arguments(user="user", record="record"), lambda s, a: s.put(a["user"], a["record"])),
    "set_fields": (arguments(user="user", fields="fields"), lambda s, a: s.set_fields(a["user"], a["fields"])),
    "charge": (
        arguments(
            user="user", cost="amount", model="model", call_id="maybe_call_id", default="default", held="maybe_amount"
        ),
        lambda s, a: s.charge(a["user"], a["cost"], a["model"], a["call_id"], a["default"], a["held"]),
    ),
    "reserve": (
        arguments(user="user", call_id="call_id", amount="amount", ttl="ttl", mode="mode", default="default"),
        lambda s, a: s.reserve(a["user"], a["call_id"], a["amount"], a["ttl"], a["mode"], a["default"]),
    ),
    "admit": (
        arguments(user="user", call_id="call_id", amount="amount", ttl="ttl", default="default"),
        lambda s, a: s.admit(a["user"], a["call_id"], a["amount"], a["ttl"], a["default"]),
    ),
    "settle": (
        arguments(call_id="call_id", actual_cost="amount", model="model", user="maybe_user"),
        lambda s, a: s.settle(a["call_id"], a["actual_cost"], a["model"], a["user"]),
    ),
    "release": (arguments(call_id="call_id", user="maybe_user"), lambda s, a: s.release(a["call_id"], a["user"])),
    "reset": (arguments(user="user"), lambda s, a: s.reset(a["user"])),
    "roll": (arguments(user="user"), lambda s, a: s.roll(a["user"])),
    "delete": (arguments(user="user"), lambda s, a: s.delete(a["user"])),
    "get": (arguments(user="user"), lambda s, a: s.get(a["user"])),
}


class FreshFileStores:
    """A new FileStore for each example (its leases and pending charges start empty)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = itertools.count()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[BudgetStore]:
        store = FileStore(self.folder / f"fuzz-{next(self.count)}.json")
        store.clock = lambda: T0  # type: ignore[method-assign]
        try:
            seed(store)
            yield store
        finally:
            store.close()


class ReseededStore:
    """One store for the whole module, seeded again before each example."""

    def __init__(self, store: BudgetStore) -> None:
        self.store = store

    @contextlib.contextmanager
    def __call__(self) -> Iterator[BudgetStore]:
        seed(self.store)
        yield self.store


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    folder = tmp_path_factory.mktemp("fuzz-server")
    clock = ServerClock()
    clock.now = lambda: T0
    with ServerThread(directory_stores(folder, clock)) as server:
        yield server, folder


@pytest.fixture(scope="module", params=["file", "http", pytest.param("redis", marks=pytest.mark.redis)])
def stores(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], contextlib.AbstractContextManager[BudgetStore]]]:
    """A way to get a seeded store of each kind, for one example at a time."""
    if request.param == "file":
        yield FreshFileStores(tmp_path_factory.mktemp("fuzz-files"))
    elif request.param == "http":
        server, _ = request.getfixturevalue("fuzz_server")
        store = HttpStore(server.url, project_name="ops", retries=0)
        yield ReseededStore(store)
        store.close()
    else:
        from litellm_budget_plugin.stores.redis import RedisStore

        redis_url = request.getfixturevalue("redis_server").url
        redis_store = RedisStore(redis_url, project="fuzz")
        redis_store.clock = lambda: T0  # type: ignore[method-assign]
        yield ReseededStore(redis_store)
        redis_store.close()


@pytest.mark.parametrize("op", OPS)
def test_store_operations(
    stores: Callable[[], contextlib.AbstractContextManager[BudgetStore]], op: str, request: pytest.FixtureRequest
) -> None:
    arguments, call = OPS[op]
    kind = request.node.callspec.params["stores"]

    @examples(20)
    @given(args=arguments)
    def property_(args: dict[str, Any]) -> None:
        with stores() as store:
            before = store.all()
            tally_input(f"store {kind}", args)
            exc = run(f"store {kind}", lambda: call(store, args))
            who = args.get("user")
            if who is None and op in ("settle", "release"):
                who = owner_of(before, args["call_id"])
            after = store.all()
            check_outcome(f"{kind} {op}", exc, before, after, who)
            if isinstance(store, FileStore):  # what was written reads back the same elsewhere
                assert file_state(store.path) == after

    property_()


# --- the budget server's endpoints, sent directly ------------------------------------------------

ENDPOINTS = ["/get_budget", "/set_budget", *(f"/v1/{op}" for op in [*OPS, "all"] if op != "admit")]
CONTENT_TYPES = ["application/json", "text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data"]


def encode(body: object) -> bytes:
    """The JSON a client could send (NaN and Infinity as Python writes them; other types as
    their repr); past the encoder's nesting limit, a body nested deeper still."""
    try:
        return json.dumps(body, default=repr, skipkeys=True).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError):
        return b'{"project_name": "ops", "record": ' + b"[" * 5000 + b"]" * 5000 + b"}"


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
hostile_users = st.dictionaries(hostile_text, records, max_size=4)

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
        st.builds(lambda r, t, a: {"u": "mallory", "r": r, "t": t, "a": a}, records, timestamps, records),
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
        left_out = [user for user in _users_in(snapshot, journal) if user not in listed]
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


def _users_in(snapshot: bytes, journal: bytes | None) -> set[str]:
    """The user ids the files name (those a reader may list or refuse); the store opened
    them, so the snapshot is JSON and each complete journal line names a user."""
    snapshot_users = json.loads(snapshot or b"{}")
    if not isinstance(snapshot_users, dict):
        raise TypeError("not an object of users")
    users = set(snapshot_users)
    journal = journal or b""
    for line in journal[: journal.rfind(b"\n") + 1].splitlines():
        users.add(json.loads(line)["u"])
    return users


# --- LiteLLM's BudgetManager methods --------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BudgetManager]:
    made = BudgetManager("fuzz", store=tmp_path_factory.mktemp("fuzz-manager") / "user_cost.json")
    made.store.clock = lambda: T0  # type: ignore[attr-defined]
    yield made
    made.close()


MANAGER_CALLS: dict[str, tuple[st.SearchStrategy[dict[str, Any]], Callable[..., object]]] = {
    "create_budget": (
        arguments(total_budget="budget", user="user", duration="duration", created_at="created_at"),
        BudgetManager.create_budget,
    ),
    "update_cost": (
        arguments(user="user", model="model", input_text="text", output_text="text"),
        BudgetManager.update_cost,
    ),
    "projected_cost": (arguments(model="model", messages="messages", user="user"), BudgetManager.projected_cost),
    "get_current_cost": (arguments(user="user"), BudgetManager.get_current_cost),
    "get_total_budget": (arguments(user="user"), BudgetManager.get_total_budget),
    "get_model_cost": (arguments(user="user"), BudgetManager.get_model_cost),
    "is_valid_user": (arguments(user="user"), BudgetManager.is_valid_user),
    "reset_cost": (arguments(user="user"), BudgetManager.reset_cost),
    "reset_on_duration": (arguments(user="user"), BudgetManager.reset_on_duration),
    "update_budget_all_users": (st.just({}), BudgetManager.update_budget_all_users),
    "user_dict[user][field] = value": (
        arguments(user="key", field="field", value="value"),
        lambda m, user, field, value: m.user_dict[user].__setitem__(field, value),
    ),
    "user_dict[user] = record": (
        arguments(user="key", record="record"),
        lambda m, user, record: m.user_dict.__setitem__(user, record),
    ),
    "del user_dict[user]": (arguments(user="key"), lambda m, user: m.user_dict.__delitem__(user)),
}


@examples(200)
@given(name=st.sampled_from(list(MANAGER_CALLS)), data=st.data())
def test_budget_manager(fuzz_manager: BudgetManager, name: str, data: st.DataObject) -> None:
    drawn, call = MANAGER_CALLS[name]
    kwargs = data.draw(drawn)
    tally_input("BudgetManager", kwargs)
    seed(fuzz_manager.store)
    before = fuzz_manager.store.all()
    lookup = "user_dict[" in name  # a missing key is a KeyError, as for any mapping
    exc = run("BudgetManager", lambda: call(fuzz_manager, **kwargs), KeyError if lookup else None)
    check_outcome(f"BudgetManager.{name}", exc, before, fuzz_manager.store.all(), kwargs.get("user"))


@examples(100)
@given(
    settings=arguments(
        mode="guard_mode",
        unknown_users="unknown_users",
        default_budget="budget",
        default_duration="duration",
        anonymous_user="maybe_user",
        on_store_error="on_store_error",
        lease_seconds="lease_seconds",
        output_token_cap="output_token_cap",
        alert_threshold="alert_threshold",
        global_budget="global_budget",
        global_duration="global_duration",
    )
)
def test_budget_guard_settings(fuzz_manager: BudgetManager, settings: dict[str, Any]) -> None:
    """A guard is made with settings in range, or refused with ConfigurationError."""
    from litellm_budget_plugin import BudgetGuard

    before = fuzz_manager.store.all()
    tally_input("BudgetGuard(...)", settings)
    exc = run("BudgetGuard(...)", lambda: BudgetGuard(fuzz_manager.store, **settings))
    assert exc is None or isinstance(exc, ConfigurationError), exc
    assert fuzz_manager.store.all() == before


# --- the CLI -------------------------------------------------------------------------------------

cli_text = st.one_of(st.sampled_from(["-5", "--help", "1e400", "nan", "--store"]), hostile_text)
CLI_VALID = {
    "user": VALID["user"],
    "amount": st.one_of(st.sampled_from(["5", "0", "0.25", "$3", "1,000"]), st.floats(0, 100).map(str)),
    "duration": st.sampled_from(["daily", "weekly", "1h", "30d", "100y"]),
}
CLI_HOSTILE = {
    "user": cli_text,
    "amount": st.one_of(cli_text, amounts.map(str)),
    "duration": st.one_of(cli_text, durations.map(str)),
}


@st.composite
def cli_commands(draw: st.DrawFn) -> tuple[list[str], Any]:
    """A command line (valid words but one or two), and the file ``import`` reads (None for others)."""
    hostile = draw(st.sets(st.sampled_from(sorted(CLI_VALID)), max_size=2))

    def word(kind: str) -> str:
        return str(draw(CLI_HOSTILE[kind] if kind in hostile else CLI_VALID[kind]))

    command = draw(st.sampled_from(["set", "show", "reset", "import"]))
    if command == "set":
        duration = ["--duration", word("duration")] if draw(st.booleans()) else []
        return ["set", word("user"), word("amount"), *duration], None
    if command == "show":
        return [
            "show",
            *([word("user")] if draw(st.booleans()) else []),
            *draw(st.sampled_from([[], ["--json"]])),
        ], None
    if command == "reset":
        return ["reset", word("user")], None
    users_ = st.one_of(VALID["user"], hostile_text) if "user" in hostile else VALID["user"]
    return ["import"], draw(st.dictionaries(users_, st.one_of(good_records, records) if hostile else good_records))


@examples(80)
@given(command=cli_commands())
def test_cli(tmp_path_factory: pytest.TempPathFactory, command: tuple[list[str], Any]) -> None:
    """Exit 0, or 1, 2 or 3 with a message and the store as it was; never a traceback."""
    args, import_file = command
    folder = tmp_path_factory.mktemp("fuzz-cli")
    path = folder / "user_cost.json"
    store = FileStore(path)
    seed(store)
    store.close()
    if import_file is not None:
        source = folder / "import.json"
        source.write_bytes(encode(import_file))
        args = [*args, str(source)]
    before = file_state(path)
    result = CliRunner().invoke(cli, [*args, "--store", str(path)])
    outcome = f"exit {result.exit_code}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        outcome = f"RAW {type(result.exception).__name__}"
    tally(f"cli {args[0]}", outcome)
    assert outcome in ("exit 0", "exit 1", "exit 2", "exit 3"), (args, result.output, result.exception)
    assert "Traceback" not in result.output
    after = file_state(path)
    if result.exit_code != 0:
        assert result.output.strip(), "an error without a message"
        assert after == before
    else:
        changed = set(import_file) if import_file is not None else {args[1]} if args[0] in ("set", "reset") else set()
        check_outcome(
            f"cli {args[0]}",
            None,
            {u: r for u, r in before.items() if u not in changed},
            {u: r for u, r in after.items() if u not in changed},
            None,
        )


def file_state(path: Path) -> dict[str, UserRecord]:
    store = FileStore(path)
    store.clock = lambda: T0  # type: ignore[method-assign]
    try:
        return store.all()
    finally:
        store.close()


# --- what the fuzz suite found, kept as explicit cases ---------------------------------------------


@pytest.mark.parametrize("fields", [None, 5, "total_budget", ["total_budget"]])
def test_set_fields_that_are_not_a_dict_are_refused(stores: Any, fields: object) -> None:
    """Was AttributeError ('NoneType' object has no attribute 'items') from every store."""
    with stores() as store:
        before = store.all()
        with pytest.raises(ConfigurationError, match="fields of user 'alice' must be a dict"):
            store.set_fields("alice", fields)
        assert store.all() == before


@pytest.mark.parametrize("default", [{}, True, {"total_budget": 1}, {"total_budget": 1, "duration": None, "x": 1}])
@pytest.mark.parametrize("user", ["alice", "dave"])
def test_a_default_of_the_wrong_shape_is_refused(stores: Any, default: object, user: str) -> None:
    """Was KeyError / TypeError from the Redis store (known users too) and the file store
    (unknown users); a store may ignore the default of a user it knows, never crash on it."""
    with stores() as store:
        before = store.all()
        for call in (
            lambda: store.charge(user, 0.1, "m", default=default),
            lambda: store.reserve(user, "c-default", 0.1, 60, default=default),
            lambda: store.admit(user, "c-default-2", 0.1, 60, default=default),
        ):
            try:
                call()
            except ConfigurationError as exc:
                assert "default must be" in str(exc)
            else:
                assert user in before  # only a known user may go through, its default unused
        if user not in before:
            assert store.all() == before


@pytest.mark.parametrize("user", [bytearray(b"1"), ["alice"], "", "a\x00", "\ud800"])
def test_settle_and_release_check_the_user_given(stores: Any, user: object) -> None:
    """Was TypeError (unhashable type) from the file store; now ConfigurationError, nothing changed."""
    with stores() as store:
        before = store.all()
        with pytest.raises(ConfigurationError):
            store.settle("held-b1", 0.1, "m", user=user)
        with pytest.raises(ConfigurationError):
            store.release("held-b1", user=user)
        assert store.all() == before


@pytest.mark.parametrize(
    ("fields", "model"),
    [
        ({}, "m"),  # alice has spent 1.0: 1.0 + 1e15 is past the ceiling
        ({"current_cost": 0.0, "model_cost": {"m": 1e15}}, "m"),  # the model's sum passes it
    ],
)
def test_a_charge_past_the_ceiling_is_refused(stores: Any, fields: dict[str, Any], model: str) -> None:
    """Was accepted: the Redis store wrote a record it then refused to read (StoreCorruptError
    for alice ever after, left out of every listing), the file store one it refuses on reopening."""
    with stores() as store:
        if fields:
            store.set_fields("alice", fields)
        before = store.all()
        with pytest.raises(ConfigurationError, match="past 1e\\+15"):
            store.charge("alice", 1e15, model)
        assert store.all() == before
        assert store.get("alice") == before["alice"]


def test_the_redis_script_has_the_same_ceiling() -> None:
    from importlib import resources

    from litellm_budget_plugin.limits import MAX_AMOUNT

    source = resources.files("litellm_budget_plugin.stores").joinpath("redis_budget.lua").read_text()
    found = re.search(r"^local MAX_AMOUNT = (\S+)$", source, re.MULTILINE)
    assert found is not None and float(found.group(1)) == MAX_AMOUNT
