"""BudgetGuard(cap_output=True): calls capped to what their budget can pay, against real litellm calls
to the local OpenAI-compatible server, which records each request body it receives."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import litellm
import pytest
from fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI
from test_guard import async_wait_until
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, BudgetManager, ConfigurationError, pricing
from litellm_budget_plugin.guard import BudgetGuard

MODEL = "openai/gpt-4o-mini"
IN_PRICE, OUT_PRICE = 1.5e-7, 6e-7  # gpt-4o-mini in litellm's bundled cost map
SERVER_COST = PROMPT_TOKENS * IN_PRICE + COMPLETION_TOKENS * OUT_PRICE
# Long enough that the estimate counts more prompt tokens than the server bills (PROMPT_TOKENS).
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word, please."}]
PROMPT_COST = pricing.worst_case("completion", MODEL, {"messages": MESSAGES}).prompt_cost


def test_prices_are_litellm_s() -> None:
    entry = litellm.model_cost["gpt-4o-mini"]
    assert (entry["input_cost_per_token"], entry["output_cost_per_token"]) == (IN_PRICE, OUT_PRICE)
    assert PROMPT_COST >= PROMPT_TOKENS * IN_PRICE


def call(server: FakeOpenAI, **kwargs: Any) -> Any:
    return litellm.completion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, **kwargs)


def sent(server: FakeOpenAI, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = server.requests[index]["body"]
    return body


def pays_for(amount: float) -> int:
    """The output tokens ``amount`` pays for after the prompt."""
    return pricing.WorstCase(PROMPT_COST, OUT_PRICE, 10**9).output_tokens_for(amount)


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"cap_output": 1}, "cap_output"),
        ({"cap_output": "yes"}, "cap_output"),
        ({"min_output_tokens": 0}, "min_output_tokens"),
        ({"min_output_tokens": 1.5}, "min_output_tokens"),
        ({"min_output_tokens": True}, "min_output_tokens"),
        ({"min_output_tokens": 10_000_001}, "min_output_tokens"),
    ],
)
def test_bad_options_are_refused_naming_them(manager: BudgetManager, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        BudgetGuard(manager, **options)


# --- the request the provider sees ------------------------------------------------------------


def test_a_call_without_max_tokens_is_capped_to_what_the_budget_pays(server, manager, register) -> None:
    budget = 1e-4
    manager.create_budget(budget, "alice")
    register(BudgetGuard(manager, cap_output=True))

    call(server, user="alice")

    assert sent(server)["max_tokens"] == pays_for(budget)
    assert 16 <= pays_for(budget) < 16_384  # less than gpt-4o-mini's maximum
    assert manager.get_current_cost("alice") == pytest.approx(SERVER_COST)


def test_a_call_is_given_the_model_s_maximum_when_the_budget_pays_it(server, manager, register) -> None:
    manager.create_budget(10.0, "alice")
    register(BudgetGuard(manager, cap_output=True))
    call(server, user="alice")
    assert sent(server)["max_tokens"] == litellm.model_cost["gpt-4o-mini"]["max_output_tokens"]


def test_max_tokens_above_what_the_budget_pays_is_lowered_and_below_it_kept(server, manager, register) -> None:
    budget = PROMPT_COST + 100 * OUT_PRICE
    manager.create_budget(budget, "alice")
    register(BudgetGuard(manager, cap_output=True))

    call(server, user="alice", max_tokens=5000)
    call(server, user="bob", max_tokens=5000)  # no budget: nothing to cap
    call(server, user="alice", max_tokens=30)

    assert sent(server, 0)["max_tokens"] in (99, 100)  # floor of a float division
    assert sent(server, 1)["max_tokens"] == 5000
    assert sent(server, 2)["max_tokens"] == 30


def test_max_completion_tokens_is_the_limit_lowered_when_the_request_uses_it(server, manager, register) -> None:
    manager.create_budget(PROMPT_COST + 50.5 * OUT_PRICE, "alice")
    register(BudgetGuard(manager, cap_output=True))
    call(server, user="alice", max_completion_tokens=1000)
    assert sent(server)["max_completion_tokens"] == 50
    assert "max_tokens" not in sent(server)


def test_without_cap_output_the_request_is_left_as_it_was(server, manager, register) -> None:
    manager.create_budget(10.0, "alice")
    register(BudgetGuard(manager))
    call(server, user="alice")
    assert "max_tokens" not in sent(server) and "max_completion_tokens" not in sent(server)


@pytest.mark.parametrize("model", ["openai/o3-mini", "openai/gpt-5"])
def test_a_reasoning_model_gets_max_completion_tokens(server, manager, register, model: str) -> None:
    """litellm maps the max_tokens the guard sets to OpenAI's reasoning models' max_completion_tokens."""
    worst = pricing.worst_case("completion", model, {"messages": MESSAGES})
    manager.create_budget(worst.prompt_cost + 300.5 * worst.output_price, "alice")
    register(BudgetGuard(manager, cap_output=True))

    litellm.completion(model=model, api_base=server.url, api_key="k", messages=MESSAGES, user="alice")

    assert sent(server)["max_completion_tokens"] == 300
    assert "max_tokens" not in sent(server)


def test_a_text_completion_is_capped(server, manager, register) -> None:
    model = "openai/gpt-3.5-turbo-instruct"
    prompt = "Say hello to the fake server, in a few words please."
    worst = pricing.worst_case("text_completion", model, {"prompt": prompt})
    manager.create_budget(worst.prompt_cost + 40.5 * worst.output_price, "alice")
    register(BudgetGuard(manager, cap_output=True))

    litellm.text_completion(model=model, api_base=server.url, api_key="k", prompt=prompt, user="alice")

    assert sent(server)["max_tokens"] == 40


def test_a_stream_is_capped(server, manager, register) -> None:
    budget = PROMPT_COST + 70.5 * OUT_PRICE
    manager.create_budget(budget, "alice")
    register(BudgetGuard(manager, cap_output=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in call(server, user="alice", stream=True))
    assert text and sent(server)["max_tokens"] == 70
    wait_until(lambda: manager.get_current_cost("alice") > 0)


def test_router_calls_are_capped(server, manager, register) -> None:
    manager.create_budget(PROMPT_COST + 60.5 * OUT_PRICE, "alice")
    register(BudgetGuard(manager, cap_output=True))
    router = litellm.Router(
        model_list=[{"model_name": "small", "litellm_params": {"model": MODEL, "api_base": server.url, "api_key": "k"}}]
    )

    router.completion(model="small", messages=MESSAGES, user="alice")
    assert sent(server)["max_tokens"] == 60

    asyncio.run(router.acompletion(model="small", messages=MESSAGES, user="alice"))
    assert server.count == 2
    assert sent(server)["max_tokens"] <= 60  # what is left once the first call is charged


def test_async_calls_and_streams_are_capped(server, manager, register) -> None:
    manager.create_budget(PROMPT_COST + 80.5 * OUT_PRICE, "alice")
    manager.create_budget(PROMPT_COST + 90.5 * OUT_PRICE, "bob")
    register(BudgetGuard(manager, cap_output=True))

    async def stream() -> str:
        response = await litellm.acompletion(
            model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, user="bob", stream=True
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in response])

    asyncio.run(litellm.acompletion(model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, user="alice"))
    assert sent(server)["max_tokens"] == 80
    assert asyncio.run(stream())
    assert sent(server)["max_tokens"] == 90


# --- refusing -------------------------------------------------------------------------------------


def test_a_call_is_refused_before_the_provider_when_not_even_min_output_tokens_fit(server, manager, register) -> None:
    manager.create_budget(PROMPT_COST + 15.5 * OUT_PRICE, "alice")
    register(BudgetGuard(manager, cap_output=True, min_output_tokens=16))

    with pytest.raises(BudgetExceededError) as info:
        call(server, user="alice")

    assert server.count == 0
    assert "min_output_tokens=16" in str(info.value)
    assert manager.get_current_cost("alice") == 0.0
    record = manager.store.get("alice")
    assert record is not None and not record.get("reservations")  # nothing held for it
    litellm.callbacks.clear()
    register(BudgetGuard(manager, cap_output=True, min_output_tokens=15))
    call(server, user="alice")  # 15 fit
    assert sent(server)["max_tokens"] == 15


def test_the_issue_s_example_a_tiny_budget_answers_several_questions(server, manager, register) -> None:
    """With cap_output, a $0.0001 budget on gpt-4o-mini answers several short questions instead of
    refusing the first, as it does without: a call with no max_tokens is held for 16,384 tokens."""
    manager.create_budget(0.0001, "alice")
    manager.create_budget(0.0001, "bob")
    register(BudgetGuard(manager))
    with pytest.raises(BudgetExceededError):
        call(server, user="bob")
    assert server.count == 0
    litellm.callbacks.clear()

    register(BudgetGuard(manager, cap_output=True))
    answered = 0
    with contextlib.suppress(BudgetExceededError):
        for _ in range(50):
            call(server, user="alice")
            answered += 1

    assert answered >= 5
    assert all(16 <= request["body"]["max_tokens"] <= pays_for(0.0001) for request in server.requests)
    # the fake server bills 20 output tokens whatever the limit: a last answer capped to 16-19
    # tokens is billed up to 4 tokens more than a provider that honours max_tokens would bill
    assert manager.get_current_cost("alice") <= 0.0001 + (COMPLETION_TOKENS - 16) * OUT_PRICE


# --- strict mode never overspends under concurrency --------------------------------------------


async def logging_worker_idle() -> None:
    """litellm 1.80's asyncio.run can hang at exit while its logging worker is busy (see
    test_guard.litellm_logging_worker_idle); its queue is looked up each time, as litellm may
    replace it when a new event loop starts."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    await async_wait_until(lambda: getattr(getattr(GLOBAL_LOGGING_WORKER, "_queue", None), "_unfinished_tasks", 0) == 0)


def concurrent_budget(manager: BudgetManager) -> float:
    """A budget for about three calls of 40 output tokens, so most of 20 calls are refused or capped."""
    budget = 3.8 * (PROMPT_COST + 40 * OUT_PRICE)  # the fourth call usually gets ~31 tokens
    manager.create_budget(budget, "alice")
    return budget


def check_no_overspend(server: FakeOpenAI, manager: BudgetManager, budget: float, answered: int) -> None:
    assert answered >= 3 and server.count == answered
    assert all(COMPLETION_TOKENS <= request["body"]["max_tokens"] <= 40 for request in server.requests)
    assert manager.get_current_cost("alice") == pytest.approx(answered * SERVER_COST)
    assert manager.get_current_cost("alice") <= budget


def test_threads_never_overspend_with_cap_output(server, manager, register) -> None:
    budget = concurrent_budget(manager)
    # min_output_tokens: the fake server bills COMPLETION_TOKENS whatever max_tokens says
    register(BudgetGuard(manager, cap_output=True, min_output_tokens=COMPLETION_TOKENS))
    server.response_delay = 0.05
    barrier = threading.Barrier(20)
    answered: list[int] = []

    def ask() -> None:
        barrier.wait(timeout=30)
        with contextlib.suppress(BudgetExceededError):
            call(server, user="alice", max_tokens=40)
            answered.append(1)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    wait_until(lambda: manager.get_current_cost("alice") == pytest.approx(len(answered) * SERVER_COST))
    check_no_overspend(server, manager, budget, len(answered))


def test_asyncio_tasks_never_overspend_with_cap_output(server, manager, register) -> None:
    budget = concurrent_budget(manager)
    register(BudgetGuard(manager, cap_output=True, min_output_tokens=COMPLETION_TOKENS))
    server.response_delay = 0.05

    async def ask() -> int:
        try:
            await litellm.acompletion(
                model=MODEL, api_base=server.url, api_key="k", messages=MESSAGES, user="alice", max_tokens=40
            )
        except BudgetExceededError:
            return 0
        return 1

    async def main() -> int:
        answered = sum(await asyncio.gather(*(ask() for _ in range(20))))
        await async_wait_until(lambda: manager.get_current_cost("alice") == pytest.approx(answered * SERVER_COST))
        await logging_worker_idle()
        return answered

    check_no_overspend(server, manager, budget, asyncio.run(main()))


def test_the_global_budget_caps_a_call_without_a_user(server, manager, register) -> None:
    """litellm.max_budget keeps litellm's soft rule, and caps the output to what is left of it."""
    register(BudgetGuard(manager, cap_output=True))
    litellm.max_budget = PROMPT_COST + 90.5 * OUT_PRICE
    call(server)
    assert sent(server)["max_tokens"] == 90
