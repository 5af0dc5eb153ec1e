"""What the fuzz suite checks after every call, and its seeded data, server and tally.

The suite (tests/test_fuzz.py: the Python API, the CLI; tests/test_fuzz_io.py: HTTP bodies and
store files) gives every entry values from ``fuzz_strategies`` (valid ones now and then, hostile
ones mostly). Whatever the input, the outcome is one of two:

- a documented error (``ConfigurationError``, a budget refusal, ``UnknownUserError``, a
  ``StoreError``; over HTTP a 4xx with a JSON error, never a 500; from the CLI exit code 1, 2
  or 3 with a message) and the data exactly as it was;
- success, and every other user's record exactly as it was.

Money in every record stays finite and not negative. The CI run is short (a fixed set of
examples per property); ``FUZZ_EXAMPLES=2000 pytest tests/test_fuzz*.py`` runs longer. The
figures (calls per target, outcome classes) are printed at the end of each module (with ``-s``)
and written to ``fuzz_report.json`` in pytest's base temporary folder (``$FUZZ_REPORT`` names
another file), counting every fuzz module run so far.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz_strategies import T0, TALLY, arguments, tally
from hypothesis import strategies as st
from server_thread import ServerClock, ServerThread, directory_stores

from litellm_budget_plugin import FileStore
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.errors import BudgetPluginError, BudgetRefusal
from litellm_budget_plugin.stores import BudgetStore

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
        "group": {"name": "t", "tags": [1, "x", None]},
    },
}
DOCUMENTED = (BudgetPluginError, BudgetRefusal)


# --- the tally --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Print and write the figures of this run so far: calls per target and outcome class."""
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


def check_outcome(
    target: str, exc: BaseException | None, before: dict[str, Any], after: dict[str, Any], who: object
) -> None:
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


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    folder = tmp_path_factory.mktemp("fuzz-server")
    clock = ServerClock()
    clock.now = lambda: T0
    with ServerThread(directory_stores(folder, clock)) as server:
        yield server, folder


def encode(body: object) -> bytes:
    """The JSON a client could send (NaN and Infinity as Python writes them; other types as
    their repr); past the encoder's nesting limit, a body nested deeper still."""
    try:
        return json.dumps(body, default=repr, skipkeys=True).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError):
        return b'{"project_name": "ops", "record": ' + b"[" * 5000 + b"]" * 5000 + b"}"


def file_state(path: Path) -> dict[str, UserRecord]:
    store = FileStore(path)
    store.clock = lambda: T0  # type: ignore[method-assign]
    try:
        return store.all()
    finally:
        store.close()
