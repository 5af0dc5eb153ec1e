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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fuzz_strategies import (
    SEEDED_USERS,
    TALLY,
    amounts,
    call_ids,
    defaults,
    durations,
    examples,
    field_dicts,
    hostile_text,
    keys,
    models,
    modes,
    records,
    tally,
    timestamps,
    ttls,
    user_ids,
    users,
)
from hypothesis import given
from hypothesis import strategies as st
from server_thread import ServerClock, ServerThread, directory_stores

from litellm_budget_plugin import BudgetManager, FileStore
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.cli import main as cli
from litellm_budget_plugin.errors import BudgetPluginError, BudgetRefusal, StoreCorruptError, StoreError
from litellm_budget_plugin.stores import BudgetStore
from litellm_budget_plugin.stores.http import HttpStore

T0 = 1_800_000_000.0
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
    summary = {
        "inputs": sum(TALLY.values()),
        "raw_exceptions": sum(n for (_, o), n in TALLY.items() if o.startswith("RAW")),
        "http_500": sum(n for (_, o), n in TALLY.items() if o == "http 500"),
        "other_users_changed": sum(n for (_, o), n in TALLY.items() if o == "OTHER USERS CHANGED"),
        "targets": targets,
    }
    path = Path(os.environ.get("FUZZ_REPORT") or tmp_path_factory.getbasetemp() / "fuzz_report.json")
    path.write_text(json.dumps(summary, indent=1))
    print(f"\nfuzz report ({path}):\n{json.dumps(summary, indent=1)}")


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, DOCUMENTED):
        return type(exc).__name__
    return f"RAW {type(exc).__name__}"


def run(target: str, action: Callable[[], object], also: type[Exception] | None = None) -> BaseException | None:
    """Call ``action``; tally its outcome; fail on an exception that is not documented
    (``also``: one more that is, e.g. ``KeyError`` for a lookup in a mapping)."""
    try:
        action()
    except (*DOCUMENTED, *([also] if also else [])) as exc:
        tally(target, outcome_of(exc))
        return exc
    except Exception as exc:
        tally(target, outcome_of(exc))
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

optional = st.none().__or__
OPS: dict[str, tuple[st.SearchStrategy[dict[str, Any]], Callable[[BudgetStore, dict[str, Any]], object]]] = {
    "set_budget": (
        st.fixed_dictionaries(
            {"user": users, "total_budget": optional(amounts), "duration": durations, "created_at": optional(timestamps)}
        ),
        lambda s, a: s.set_budget(a["user"], a["total_budget"], a["duration"], a["created_at"]),
    ),
    "put": (st.fixed_dictionaries({"user": users, "record": records}), lambda s, a: s.put(a["user"], a["record"])),
    "set_fields": (
        st.fixed_dictionaries({"user": users, "fields": field_dicts}),
        lambda s, a: s.set_fields(a["user"], a["fields"]),
    ),
    "charge": (
        st.fixed_dictionaries(
            {
                "user": users,
                "cost": amounts,
                "model": models,
                "call_id": optional(call_ids),
                "default": defaults,
                "held": optional(amounts),
            }
        ),
        lambda s, a: s.charge(a["user"], a["cost"], a["model"], a["call_id"], a["default"], a["held"]),
    ),
    "reserve": (
        st.fixed_dictionaries(
            {"user": users, "call_id": call_ids, "amount": amounts, "ttl": ttls, "mode": modes, "default": defaults}
        ),
        lambda s, a: s.reserve(a["user"], a["call_id"], a["amount"], a["ttl"], a["mode"], a["default"]),
    ),
    "admit": (
        st.fixed_dictionaries({"user": users, "call_id": call_ids, "amount": amounts, "ttl": ttls, "default": defaults}),
        lambda s, a: s.admit(a["user"], a["call_id"], a["amount"], a["ttl"], a["default"]),
    ),
    "settle": (
        st.fixed_dictionaries({"call_id": call_ids, "actual_cost": amounts, "model": models, "user": optional(users)}),
        lambda s, a: s.settle(a["call_id"], a["actual_cost"], a["model"], a["user"]),
    ),
    "release": (
        st.fixed_dictionaries({"call_id": call_ids, "user": optional(users)}),
        lambda s, a: s.release(a["call_id"], a["user"]),
    ),
    "reset": (st.fixed_dictionaries({"user": users}), lambda s, a: s.reset(a["user"])),
    "roll": (st.fixed_dictionaries({"user": users}), lambda s, a: s.roll(a["user"])),
    "delete": (st.fixed_dictionaries({"user": users}), lambda s, a: s.delete(a["user"])),
    "get": (st.fixed_dictionaries({"user": users}), lambda s, a: s.get(a["user"])),
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
            exc = run(f"store {kind}", lambda: call(store, args))
            who = args.get("user")
            if who is None and op in ("settle", "release"):
                who = owner_of(before, args["call_id"])
            check_outcome(f"{kind} {op}", exc, before, store.all(), who)

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


project_names = st.one_of(st.just("ops"), st.just("ops"), hostile_text, st.sampled_from(["../evil", "a/b", 7, None]))


@st.composite
def v1_bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """An endpoint of /v1 and a body: the operation's fields, fuzzed, some left out, one more."""
    op = draw(st.sampled_from([op for op in OPS if op != "admit"]))
    fields = draw(OPS[op][0])
    body = {k: v for k, v in fields.items() if not draw(st.booleans()) or k in ("user", "call_id")}
    if draw(st.integers(0, 9)) == 0:
        body[draw(hostile_text)] = draw(st.integers())
    return f"/v1/{op}", {"project_name": draw(project_names), **body}


@examples(120)
@given(sent=v1_bodies())
def test_v1_endpoints(
    client: httpx.Client, ops_store: HttpStore, fuzz_server: tuple[ServerThread, Path], sent: Any
) -> None:
    path, body = sent
    seed(ops_store)
    files_before, before = server_state(client, fuzz_server[1])
    response = client.post(path, content=encode(body), headers={"Content-Type": "application/json"})
    check_answer(f"http {path.split('/')[1]}", response)
    files_after, after = server_state(client, fuzz_server[1])
    if response.status_code >= 400:
        assert (files_after, after) == (files_before, before), f"{path} answered {response.status_code}, changed data"
    else:
        who = body.get("user") or owner_of(before, body.get("call_id"))
        check_outcome(path, None, before, after, who)


good_records = st.fixed_dictionaries(
    {"total_budget": st.one_of(st.none(), st.floats(0, 100))}, optional={"duration": st.sampled_from(["daily", 7])}
)
user_dicts = st.one_of(
    st.dictionaries(st.sampled_from([*SEEDED_USERS, "dave"]), good_records, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(SEEDED_USERS), hostile_text), st.one_of(good_records, records), max_size=4),
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

GOOD_ALICE = {"total_budget": 10.0, "current_cost": 1.0, "model_cost": {"m": 1.0}, "created_at": T0, "last_updated_at": T0}
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
        assert isinstance(exc, StoreError), exc
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


def _users_in(snapshot: bytes, journal: bytes | None) -> set[str]:
    """The user ids the files name (those a reader may list or refuse); the store opened
    them, so the snapshot is JSON and each complete journal line names a user."""
    users = set(json.loads(snapshot or b"{}"))
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


messages = st.one_of(
    st.just([{"role": "user", "content": "hello"}]),
    st.lists(st.one_of(st.fixed_dictionaries({"role": hostile_text, "content": hostile_text}), st.integers())),
    st.sampled_from([None, "hi", {"role": "user"}, 5, [None], b"x"]),
)
dict_keys = st.one_of(user_ids, keys)  # a mapping's keys are hashable
MANAGER_CALLS: dict[str, tuple[st.SearchStrategy[tuple[Any, ...]], Callable[..., object]]] = {
    "create_budget": (
        st.tuples(amounts, users, durations, optional(timestamps)),
        lambda m, total, user, duration, created: m.create_budget(total, user, duration, created),
    ),
    "update_cost": (
        st.tuples(users, optional(models), optional(hostile_text), optional(hostile_text)),
        lambda m, user, model, i, o: m.update_cost(user, model=model, input_text=i, output_text=o),
    ),
    "projected_cost": (st.tuples(models, messages, users), lambda m, mod, msg, u: m.projected_cost(mod, msg, u)),
    "get_current_cost": (st.tuples(users), lambda m, user: m.get_current_cost(user)),
    "get_total_budget": (st.tuples(users), lambda m, user: m.get_total_budget(user)),
    "get_model_cost": (st.tuples(users), lambda m, user: m.get_model_cost(user)),
    "is_valid_user": (st.tuples(users), lambda m, user: m.is_valid_user(user)),
    "reset_cost": (st.tuples(users), lambda m, user: m.reset_cost(user)),
    "reset_on_duration": (st.tuples(users), lambda m, user: m.reset_on_duration(user)),
    "update_budget_all_users": (st.tuples(), lambda m: m.update_budget_all_users()),
    "user_dict[user][field] =": (
        st.tuples(dict_keys, st.sampled_from(["total_budget", "current_cost", "duration", "model_cost", "x"]), amounts),
        lambda m, user, field, value: m.user_dict[user].__setitem__(field, value),
    ),
    "user_dict[user] =": (st.tuples(dict_keys, records), lambda m, user, record: m.user_dict.__setitem__(user, record)),
    "del user_dict[user]": (st.tuples(dict_keys), lambda m, user: m.user_dict.__delitem__(user)),
}


@examples(200)
@given(name=st.sampled_from(list(MANAGER_CALLS)), data=st.data())
def test_budget_manager(fuzz_manager: BudgetManager, name: str, data: st.DataObject) -> None:
    arguments, call = MANAGER_CALLS[name]
    args = data.draw(arguments)
    seed(fuzz_manager.store)
    before = fuzz_manager.store.all()
    lookup = name.startswith(("user_dict[", "del user_dict["))
    exc = run("BudgetManager", lambda: call(fuzz_manager, *args), KeyError if lookup else None)
    check_outcome(f"BudgetManager.{name}", exc, before, fuzz_manager.store.all(), args[1] if name == "create_budget" else (args[0] if args else None))


# --- the CLI -------------------------------------------------------------------------------------

cli_text = st.one_of(st.sampled_from([*SEEDED_USERS, "dave", "-5", "--help", "1e400", "nan"]), hostile_text)


@st.composite
def cli_commands(draw: st.DrawFn) -> tuple[list[str], Any]:
    """A command line, and the file ``import`` reads (None for other commands)."""
    command = draw(st.sampled_from(["set", "show", "reset", "import"]))
    if command == "set":
        args = ["set", draw(cli_text), draw(st.one_of(cli_text, amounts.map(str)))]
        if draw(st.booleans()):
            args += ["--duration", draw(st.one_of(cli_text, durations.map(str)))]
        return args, None
    if command == "show":
        return ["show", *draw(st.lists(cli_text, max_size=1)), *draw(st.sampled_from([[], ["--json"]]))], None
    if command == "reset":
        return ["reset", draw(cli_text)], None
    return ["import"], draw(st.one_of(hostile_users, st.dictionaries(st.sampled_from(["dave", "bob"]), good_records)))


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
        check_outcome(f"cli {args[0]}", None, {u: r for u, r in before.items() if u not in changed}, {u: r for u, r in after.items() if u not in changed}, None)


def file_state(path: Path) -> dict[str, UserRecord]:
    store = FileStore(path)
    store.clock = lambda: T0  # type: ignore[method-assign]
    try:
        return store.all()
    finally:
        store.close()
