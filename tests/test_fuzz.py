"""The fuzz suite (see fuzz_checks.py) on the Python API and the CLI: every store operation on
the file, HTTP and Redis stores, LiteLLM's BudgetManager methods, BudgetGuard's settings, the
``litellm-budget`` commands; and the cases it found, kept as explicit tests."""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fuzz_checks import OPS, T0, check_outcome, encode, file_state, fuzz_server, owner_of, report, run, seed
from fuzz_strategies import (
    VALID,
    amounts,
    arguments,
    durations,
    examples,
    good_records,
    hostile_text,
    records,
    tally,
    tally_input,
)
from hypothesis import given
from hypothesis import strategies as st

from litellm_budget_plugin import BudgetManager, FileStore
from litellm_budget_plugin.cli import main as cli
from litellm_budget_plugin.errors import ConfigurationError
from litellm_budget_plugin.stores import BudgetStore
from litellm_budget_plugin.stores.http import HttpStore

__all__ = ["fuzz_server", "report"]  # fixtures, used here


# --- every store operation, on each store -----------------------------------------------------


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
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=folder):  # a word taken for a store path is a file here
        result = runner.invoke(cli, [*args, "--store", str(path)])
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
    from litellm_budget_plugin.stores.redis import LUA_FILES

    source = "\n".join(resources.files("litellm_budget_plugin.stores").joinpath(name).read_text() for name in LUA_FILES)
    found = re.search(r"^local MAX_AMOUNT = (\S+)$", source, re.MULTILINE)
    assert found is not None and float(found.group(1)) == MAX_AMOUNT
