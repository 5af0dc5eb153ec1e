"""Output limits: every limit a request carries is capped (``extra_body`` too), and a call without
one is held for what its model can write, so strict mode never overspends. Against the local
OpenAI-compatible server billing what it receives: the prompt's words, and as many completion
tokens as it is told to write, at most the request's limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import litellm
import pytest
from fake_openai import FakeOpenAI
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, BudgetManager, ConfigurationError, pricing
from litellm_budget_plugin.guard import BudgetGuard

MODEL = "openai/gpt-4o-mini"
OUT_PRICE = 6e-7  # gpt-4o-mini in litellm's bundled cost map
MOST = 16_384  # gpt-4o-mini's max_output_tokens there
MESSAGES = [{"role": "user", "content": "hi"}]
LIMITS = ("max_tokens", "max_completion_tokens")


@pytest.fixture
def billing(server: FakeOpenAI) -> FakeOpenAI:
    """The server writes all the model can, unless the request's limit is lower."""
    server.bill_words = True
    server.completion_tokens = MOST
    return server


def call(server: FakeOpenAI, **kwargs: Any) -> Any:
    return litellm.completion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


def spend(manager: BudgetManager, user: str, at_least: float) -> float:
    wait_until(lambda: manager.get_current_cost(user) >= at_least * (1 - 1e-9))
    return manager.get_current_cost(user)


def test_the_model_s_limit_is_the_one_in_the_cost_map() -> None:
    assert litellm.model_cost["gpt-4o-mini"]["max_output_tokens"] == MOST
    assert litellm.model_cost["gpt-4o-mini"]["output_cost_per_token"] == OUT_PRICE


# --- cap_output and extra_body ----------------------------------------------------------------


@pytest.mark.parametrize("key", LIMITS)
def test_cap_output_lowers_a_limit_given_in_extra_body(
    billing: FakeOpenAI, manager: BudgetManager, register, key: str
) -> None:
    budget = 0.001
    manager.create_budget(budget, "alice")
    register(BudgetGuard(manager, cap_output=True))
    extra_body = {key: 16_000}

    response = call(billing, user="alice", extra_body=extra_body)

    sent = billing.requests[-1]["body"]
    worst = pricing.worst_case("completion", MODEL, {"messages": MESSAGES}, MOST)
    paid = worst.output_tokens_for(budget)
    assert 16 <= paid < 16_000
    assert [sent[name] for name in LIMITS if name in sent] == [paid]  # no limit above the capped one
    assert extra_body == {key: 16_000}  # the caller's dict, which it may pass again, is left as it was
    assert spend(manager, "alice", response._hidden_params["response_cost"]) <= budget


def test_cap_output_lowers_every_limit_the_request_carries(
    billing: FakeOpenAI, manager: BudgetManager, register
) -> None:
    budget = 0.001
    manager.create_budget(budget, "alice")
    register(BudgetGuard(manager, cap_output=True))
    call(billing, user="alice", max_tokens=12_000, extra_body={"max_tokens": 16_000, "max_completion_tokens": 15_000})
    sent = billing.requests[-1]["body"]
    paid = pricing.worst_case("completion", MODEL, {"messages": MESSAGES}, MOST).output_tokens_for(budget)
    assert {name: sent[name] for name in LIMITS} == {"max_tokens": paid, "max_completion_tokens": paid}


def test_limits_below_the_cap_are_kept(billing: FakeOpenAI, manager: BudgetManager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager, cap_output=True))
    call(billing, user="alice", extra_body={"max_tokens": 40})
    assert billing.requests[-1]["body"]["max_tokens"] == 40


@pytest.mark.parametrize("bad", ["100", -1, 1.5, True])
def test_a_bad_limit_in_extra_body_is_refused_naming_it(
    server: FakeOpenAI, manager: BudgetManager, register, bad: object
) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager, cap_output=True))
    with pytest.raises(ConfigurationError, match=r"extra_body\['max_tokens'\] must be a non-negative integer"):
        call(server, user="alice", extra_body={"max_tokens": bad})
    assert server.count == 0


# --- the default output hold is a bound ---------------------------------------------------------


def test_a_call_without_max_tokens_is_held_for_all_the_model_can_write(
    billing: FakeOpenAI, manager: BudgetManager, register
) -> None:
    """4,096 tokens were held before, though gpt-4o-mini writes up to 16,384: a $0.005 budget
    was charged $0.0098."""
    manager.create_budget(0.005, "alice")
    manager.create_budget(0.011, "bob")
    register(BudgetGuard(manager))

    with pytest.raises(BudgetExceededError) as info:
        call(billing, user="alice")
    assert info.value.estimate >= MOST * OUT_PRICE
    assert billing.count == 0 and manager.get_current_cost("alice") == 0

    response = call(billing, user="bob")  # the budget pays for all of it: admitted
    cost = response._hidden_params["response_cost"]
    assert cost >= MOST * OUT_PRICE
    assert spend(manager, "bob", cost) <= 0.011


def test_a_set_output_token_cap_is_an_assumption_and_writing_more_is_an_overrun(
    billing: FakeOpenAI, manager: BudgetManager, register
) -> None:
    manager.create_budget(0.005, "alice")
    guard = register(BudgetGuard(manager, output_token_cap=4096))
    response = call(billing, user="alice")
    wait_until(lambda: guard.overruns.count == 1)
    (overrun,) = guard.overruns.latest
    assert overrun.held < 4100 * OUT_PRICE < overrun.actual == response._hidden_params["response_cost"]


@pytest.fixture
def unlimited_models() -> Iterator[dict[str, dict[str, Any]]]:
    """Models whose cost map entry gives only the older max_tokens field, or no limit at all."""
    entries: dict[str, dict[str, Any]] = {
        "budget-test-max-tokens-only": {"max_tokens": 1000},
        "budget-test-no-limit": {},
    }
    for name, limit in entries.items():
        entry = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-6}
        litellm.model_cost[name] = {**entry, "output_cost_per_token": 1e-5, **limit}
    yield entries
    for name in entries:
        litellm.model_cost.pop(name, None)


@pytest.mark.parametrize(("model", "held"), [("budget-test-max-tokens-only", 1000), ("budget-test-no-limit", 4096)])
def test_without_max_output_tokens_the_older_field_then_4096_tokens_are_held(
    manager: BudgetManager, register, unlimited_models: dict[str, Any], model: str, held: int
) -> None:
    manager.create_budget(1e-6, "alice")
    register(BudgetGuard(manager))
    with pytest.raises(BudgetExceededError) as info:
        litellm.completion(model=model, messages=MESSAGES, mock_response="ok", user="alice")
    expected = pricing.worst_case("completion", model, {"messages": MESSAGES, "max_tokens": held}).total
    assert info.value.estimate == pytest.approx(expected)
