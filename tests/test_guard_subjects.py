"""BudgetGuard with budgets beyond the user's: teams, tags, per-model caps and the store-wide
global budget, all held in one store operation per call, against real litellm calls (the local
fake server counts what reaches the provider)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI
from test_guard import litellm_logging_worker_idle
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, ConfigurationError, FileStore, budget_scope, pricing
from litellm_budget_plugin.guard import GLOBAL_USER, BudgetGuard
from litellm_budget_plugin.stores import BudgetStore
from litellm_budget_plugin.subjects import MAX_TAGS

MODEL = "openai/gpt-4o-mini"
IN_PRICE, OUT_PRICE = 1.5e-7, 6e-7
SERVER_COST = PROMPT_TOKENS * IN_PRICE + COMPLETION_TOKENS * OUT_PRICE
MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT_TOKENS_ESTIMATE = litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES)
ESTIMATE_100 = PROMPT_TOKENS_ESTIMATE * IN_PRICE + 100 * OUT_PRICE  # a call with max_tokens=100


def call(server: FakeOpenAI, model: str = MODEL, **kwargs: Any) -> Any:
    return litellm.completion(model=model, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


async def acall(server: FakeOpenAI, **kwargs: Any) -> Any:
    return await litellm.acompletion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[FileStore]:
    made = FileStore(tmp_path / "user_cost.json")
    yield made
    made.close()


def spend(store: BudgetStore, key: str) -> float:
    record = store.get(key)
    return 0.0 if record is None else record["current_cost"]


def holding(store: BudgetStore) -> dict[str, list[str]]:
    """The records holding anything, and the calls they hold."""
    return {key: list(record["reservations"]) for key, record in store.all().items() if record.get("reservations")}


def charged(store: BudgetStore, *keys: str, cost: float = SERVER_COST) -> Callable[[], bool]:
    return lambda: all(spend(store, key) == pytest.approx(cost) for key in keys)


# --- refused by a budget other than the user's -----------------------------------------------


def test_a_call_refused_by_its_teams_budget_never_reaches_the_provider_and_holds_nothing(
    server: FakeOpenAI, store_factory: Callable[[], BudgetStore], register
) -> None:
    store = store_factory()
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", ESTIMATE_100 / 2)
    store.set_budget("tag:search", 10.0)
    before = store.all()
    register(BudgetGuard(store))

    with pytest.raises(BudgetExceededError) as info:
        call(server, user="alice", max_tokens=100, metadata={"tags": ["search"]})

    assert info.value.subject == "team:red" and info.value.entity_type == "team"
    assert "team 'red'" in str(info.value)
    assert server.count == 0
    assert store.all() == before  # no hold on alice, on the team or on the tag

    call(server, user="alice", max_tokens=10, metadata={"tags": ["search"]})  # what fits the team goes
    wait_until(charged(store, "alice", "team:red", "tag:search"))
    assert holding(store) == {}


def test_the_team_named_on_the_call_refuses_in_async_calls_too(server: FakeOpenAI, file_store, register) -> None:
    file_store.set_budget("bob", 10.0)  # no team in its record
    file_store.set_budget("team:red", ESTIMATE_100 / 2)
    before = file_store.all()
    register(BudgetGuard(file_store))

    with pytest.raises(BudgetExceededError) as info:
        asyncio.run(acall(server, user="bob", max_tokens=100, metadata={"team": "red"}))

    assert info.value.subject == "team:red"
    assert server.count == 0 and file_store.all() == before


def test_a_refusal_by_a_team_keeps_the_hint_about_output_tokens(server: FakeOpenAI, file_store, register) -> None:
    file_store.set_budget("team:red", 1e-4)
    register(BudgetGuard(file_store))

    with pytest.raises(BudgetExceededError) as info:
        call(server, user="alice", metadata={"team": "red"})  # no max_tokens: held for the model's maximum

    assert info.value.subject == "team:red"
    assert "pass max_tokens=" in str(info.value) and "team 'red'" in str(info.value)
    assert server.count == 0 and holding(file_store) == {}


# --- charged to every budget -------------------------------------------------------------------


def test_the_metadata_team_and_tags_are_charged_with_the_user(server: FakeOpenAI, file_store, register) -> None:
    file_store.set_budget("alice", 1.0)
    file_store.set_budget("team:red", 1.0)
    file_store.set_budget("tag:search", None)  # tracked, no limit (a tag without a record is not tracked)
    register(BudgetGuard(file_store))

    call(server, user="alice", max_tokens=100, metadata={"team": "red", "tags": ["search", "prod", "search"]})

    wait_until(charged(file_store, "alice", "team:red", "tag:search"))
    assert file_store.get("tag:search")["total_budget"] is None  # type: ignore[index]
    assert file_store.get("tag:prod") is None
    assert holding(file_store) == {}


def test_a_call_without_a_user_is_held_against_its_team_alone(server: FakeOpenAI, file_store, register) -> None:
    file_store.set_budget("team:red", ESTIMATE_100 + SERVER_COST / 2)
    file_store.set_budget("tag:batch", None)  # tracked: a tag without a record is not
    register(BudgetGuard(file_store, unknown_users="deny"))  # about users: the team is known anyway

    call(server, max_tokens=100, metadata={"team": "red", "tags": ["batch"]})
    wait_until(charged(file_store, "team:red", "tag:batch"))
    with pytest.raises(BudgetExceededError) as info:
        call(server, max_tokens=100, metadata={"team": "red"})  # SERVER_COST spent: one more does not fit

    assert info.value.subject == "team:red"
    assert server.count == 1
    assert set(file_store.all()) == {"team:red", "tag:batch"}  # no user record made
    assert holding(file_store) == {}


def test_anonymous_user_takes_a_call_without_user(server: FakeOpenAI, file_store, register) -> None:
    register(BudgetGuard(file_store, anonymous_user="anonymous"))
    call(server, max_tokens=100, metadata={"team": "red"})
    wait_until(charged(file_store, "anonymous", "team:red"))


def test_a_call_with_tags_alone_is_held_by_its_tags_that_have_a_budget(
    server: FakeOpenAI, file_store, register
) -> None:
    file_store.set_budget("tag:search", 10.0)
    register(BudgetGuard(file_store))

    call(server, max_tokens=100, metadata={"tags": ["log-only", "search"]})  # no user, no team
    wait_until(charged(file_store, "tag:search"))
    call(server, max_tokens=100, metadata={"tags": ["log-only"]})  # no budget among its tags

    assert server.count == 2
    assert set(file_store.all()) == {"tag:search"}  # a tag without a budget leaves no record
    assert holding(file_store) == {}


# --- per-model caps ------------------------------------------------------------------------------


class GatedServer(FakeOpenAI):
    """The fake server, answering no request until ``gate`` is set: the calls it has are in
    flight, holding their budget, for as long as a test needs."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        super().__init__()

    @property  # read by the handler before it answers
    def response_delay(self) -> float:
        assert self.gate.wait(120), "the gate was never opened"
        return 0.0

    @response_delay.setter
    def response_delay(self, _: float) -> None:
        pass


@pytest.fixture
def gated() -> Iterator[GatedServer]:
    server = GatedServer()
    server.start()
    yield server
    server.gate.set()
    server.stop()


def test_a_model_cap_holds_and_refuses_only_its_model(gated: GatedServer, file_store, register) -> None:
    estimate = pricing.worst_case("completion", "openai/gpt-4o", {"messages": MESSAGES, "max_tokens": 100}, 100)
    cap = 1.5 * estimate.total  # one call of 100 tokens of gpt-4o, not two
    file_store.set_budget("alice", 10.0, fields={"windows": [{"budget": cap, "duration": "daily", "model": "gpt-4o"}]})
    register(BudgetGuard(file_store))
    first = threading.Thread(target=call, args=(gated, "openai/gpt-4o"), kwargs={"user": "alice", "max_tokens": 100})
    first.start()
    wait_until(lambda: gated.count == 1)  # in flight, holding

    (hold,) = file_store.get("alice")["reservations"].values()  # type: ignore[index]
    assert hold["model"] == "gpt-4o"  # the name its charge will count under, without the provider
    with pytest.raises(BudgetExceededError) as info:
        call(gated, "openai/gpt-4o", user="alice", max_tokens=100)
    assert info.value.subject == "alice" and info.value.window == f"${cap:g} daily on gpt-4o"
    other = threading.Thread(target=call, args=(gated, MODEL), kwargs={"user": "alice", "max_tokens": 100})
    other.start()
    wait_until(lambda: gated.count == 2)  # another model: not capped
    gated.gate.set()
    first.join(60)
    other.join(60)

    wait_until(lambda: holding(file_store) == {})
    record = file_store.get("alice")
    assert record is not None
    gpt_4o_cost = PROMPT_TOKENS * 2.5e-6 + COMPLETION_TOKENS * 1e-5  # as the answer names it
    assert record["windows"][0]["spend"] == pytest.approx(gpt_4o_cost)  # the cap counts its model only
    assert record["current_cost"] == pytest.approx(gpt_4o_cost + SERVER_COST)


# --- the store-wide global budget --------------------------------------------------------------


def test_the_store_wide_global_budget_is_held_with_the_user_in_one_admission(
    server: FakeOpenAI, file_store, register
) -> None:
    file_store.set_budget("alice", 10.0, fields={"team": "red"})
    register(BudgetGuard(file_store, global_budget="store"))
    litellm.max_budget = 1.0

    call(server, user="alice", max_tokens=100)
    wait_until(charged(file_store, "alice", "team:red", GLOBAL_USER))
    assert litellm._current_cost == pytest.approx(SERVER_COST)

    file_store.charge(GLOBAL_USER, 1.0, "gpt-4o-mini")  # another process spends the rest
    before = file_store.all()
    with pytest.raises(BudgetExceededError) as info:
        call(server, user="alice", max_tokens=100)
    assert info.value.subject == GLOBAL_USER
    assert (info.value.entity_type, info.value.entity_id) == ("global", GLOBAL_USER)
    assert "Budget exceeded for the global budget (litellm.max_budget)" in str(info.value)
    assert server.count == 1 and file_store.all() == before


# --- attribution -----------------------------------------------------------------------------------


def test_an_explicit_user_wins_over_the_scope(server: FakeOpenAI, file_store, register) -> None:
    register(BudgetGuard(file_store))
    for tag in ("tag:search", "tag:chat"):  # tracked: a tag without a record is not
        file_store.set_budget(tag, None)
    with budget_scope(user="bob", team="red", tags=["chat"]):
        call(server, user="alice", max_tokens=100, metadata={"team": "blue", "tags": ["search"]})

    wait_until(charged(file_store, "alice", "team:blue", "tag:search", "tag:chat"))
    assert file_store.get("bob") is None and file_store.get("team:red") is None


@pytest.mark.parametrize(
    ("metadata", "names"),
    [
        ({"tags": "search"}, "tags must be a list of strings"),
        ({"tags": ["search", 7]}, "tags must be strings, got int"),
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, f"at most {MAX_TAGS} tags"),
        ({"tags": ["search", ""]}, "tag must not be empty"),
        ({"team": ""}, "team must not be empty"),
        ({"team": ["red"]}, "team must be a string"),
    ],
)
def test_bad_teams_and_tags_refuse_the_call_before_anything_is_held(
    server: FakeOpenAI, file_store, register, metadata: dict[str, Any], names: str
) -> None:
    file_store.set_budget("alice", 1.0)
    before = file_store.all()
    register(BudgetGuard(file_store))

    with pytest.raises(ConfigurationError, match=names):
        call(server, user="alice", max_tokens=100, metadata=metadata)
    with pytest.raises(ConfigurationError, match=names):
        asyncio.run(acall(server, user="alice", max_tokens=100, metadata=metadata))

    assert server.count == 0 and file_store.all() == before


def test_too_many_tags_with_those_of_the_scope_are_refused(server: FakeOpenAI, file_store, register) -> None:
    register(BudgetGuard(file_store))
    with budget_scope(tags=[f"s{i}" for i in range(MAX_TAGS)]), pytest.raises(ConfigurationError, match="at most"):
        call(server, user="alice", max_tokens=100, metadata={"tags": ["one-more"]})
    assert server.count == 0 and file_store.all() == {}


# --- the case: 32 concurrent calls, 4 users, one team covering 10 worst cases ---------------

TEAM_BUDGET = 10 * ESTIMATE_100 * (1 + 1e-9)
USERS = ("u0", "u1", "u2", "u3")


def team_of_four(store: BudgetStore) -> None:
    for user in USERS:
        store.set_budget(user, 1.0, fields={"team": "red"})
    store.set_budget("team:red", TEAM_BUDGET)


def open_when_all_decided(server: GatedServer, refused: list[str], count: int) -> threading.Thread:
    """Open the gate once every call was admitted (it reached the server) or refused: until then
    no admitted call ends, so none frees budget for a later one."""

    def watch() -> None:
        wait_until(lambda: server.count + len(refused) == count, timeout=120)
        server.gate.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher


def assert_team_kept_its_budget(store: FileStore) -> None:
    store.flush()  # the guard charges with charge_later
    assert spend(store, "team:red") == pytest.approx(10 * SERVER_COST)
    assert spend(store, "team:red") <= TEAM_BUDGET
    assert sum(spend(store, user) for user in USERS) == pytest.approx(10 * SERVER_COST)
    assert holding(store) == {}


def test_32_threads_for_4_users_of_one_team_admit_what_the_team_covers(
    gated: GatedServer, file_store, register
) -> None:
    team_of_four(file_store)
    register(BudgetGuard(file_store))
    refused: list[str] = []
    start = threading.Barrier(32, timeout=60)

    def one(i: int) -> None:
        start.wait()
        try:
            call(gated, user=USERS[i % 4], max_tokens=100)
        except BudgetExceededError as exc:
            refused.append(exc.subject)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    watcher = open_when_all_decided(gated, refused, 32)
    for thread in threads:
        thread.start()
    for thread in [*threads, watcher]:
        thread.join(120)

    assert gated.count == 10 and refused == ["team:red"] * 22
    wait_until(lambda: holding(file_store) == {})
    assert_team_kept_its_budget(file_store)


def test_32_tasks_for_4_users_of_one_team_admit_what_the_team_covers(gated: GatedServer, file_store, register) -> None:
    team_of_four(file_store)
    register(BudgetGuard(file_store))
    refused: list[str] = []

    async def one(i: int) -> None:
        try:
            await acall(gated, user=USERS[i % 4], max_tokens=100)
        except BudgetExceededError as exc:
            refused.append(exc.subject)

    async def run() -> None:
        await asyncio.gather(*(one(i) for i in range(32)))
        await litellm_logging_worker_idle()

    watcher = open_when_all_decided(gated, refused, 32)
    asyncio.run(asyncio.wait_for(run(), 120))
    watcher.join(120)

    assert gated.count == 10 and refused == ["team:red"] * 22
    wait_until(lambda: holding(file_store) == {})
    assert_team_kept_its_budget(file_store)
