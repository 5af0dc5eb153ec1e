"""Calls that pass litellm their model, messages, prompt or input positionally are estimated
exactly as the same calls made with keywords: sync and async, against the local OpenAI-compatible
server (which records each request body it receives)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import litellm
import pytest
from fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI
from litellm.integrations.custom_logger import CustomLogger
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, BudgetManager, ConfigurationError
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.hooks import _PendingPositionals, named_positionals

LONG = "word " * 20_000  # about 20,000 tokens: dollars' worth of prompt on a small budget
MESSAGES = [{"role": "user", "content": LONG}]
CHAT, TEXT, EMBED = "openai/gpt-4o", "openai/gpt-3.5-turbo-instruct", "openai/text-embedding-3-large"
BUDGET = 0.001

Call = Callable[[dict[str, Any]], Any]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# Each case: the call with positional arguments, then the same call with keywords.
CASES: dict[str, tuple[Call, Call]] = {
    "completion": (
        lambda kw: litellm.completion(CHAT, MESSAGES, max_tokens=5, **kw),
        lambda kw: litellm.completion(model=CHAT, messages=MESSAGES, max_tokens=5, **kw),
    ),
    "acompletion": (
        lambda kw: run(litellm.acompletion(CHAT, MESSAGES, max_tokens=5, **kw)),
        lambda kw: run(litellm.acompletion(model=CHAT, messages=MESSAGES, max_tokens=5, **kw)),
    ),
    "text_completion": (
        lambda kw: litellm.text_completion(LONG, model=TEXT, max_tokens=5, **kw),
        lambda kw: litellm.text_completion(prompt=LONG, model=TEXT, max_tokens=5, **kw),
    ),
    "atext_completion": (
        lambda kw: run(litellm.atext_completion(LONG, model=TEXT, max_tokens=5, **kw)),
        lambda kw: run(litellm.atext_completion(prompt=LONG, model=TEXT, max_tokens=5, **kw)),
    ),
    "embedding": (
        lambda kw: litellm.embedding(EMBED, [LONG] * 10, **kw),
        lambda kw: litellm.embedding(model=EMBED, input=[LONG] * 10, **kw),
    ),
    "aembedding": (
        lambda kw: run(litellm.aembedding(EMBED, [LONG] * 10, **kw)),
        lambda kw: run(litellm.aembedding(model=EMBED, input=[LONG] * 10, **kw)),
    ),
}


def refusal(server: FakeOpenAI, call: Call) -> BudgetExceededError:
    with pytest.raises(BudgetExceededError) as info:
        call({"api_base": server.url, "api_key": "k", "user": "alice"})
    return info.value


@pytest.mark.parametrize("name", list(CASES))
def test_positional_arguments_are_estimated_like_keywords(
    server: FakeOpenAI, manager: BudgetManager, register, name: str
) -> None:
    manager.create_budget(BUDGET, "alice")
    guard = register(BudgetGuard(manager))
    positional, keywords = CASES[name]

    by_position = refusal(server, positional)
    by_keyword = refusal(server, keywords)

    assert by_keyword.estimate > BUDGET  # the long prompt alone is over the budget
    assert by_position.estimate == by_keyword.estimate
    assert server.count == 0  # refused before the provider
    assert len(guard.pending_positionals) == 0


def test_async_positional_calls_are_admitted_charged_and_sent_as_given(
    server: FakeOpenAI, manager: BudgetManager, register
) -> None:
    manager.create_budget(1.0, "alice")
    guard = register(BudgetGuard(manager, cap_output=True))
    messages = [{"role": "user", "content": "hi"}]
    model = "openai/gpt-4o-mini"

    async def both() -> None:
        await litellm.acompletion(model, messages, api_base=server.url, api_key="k", user="alice")
        await litellm.acompletion(model=model, messages=messages, api_base=server.url, api_key="k", user="alice")

    run(both())

    by_position, by_keyword = (server.requests[0]["body"], server.requests[1]["body"])
    assert by_position == by_keyword  # the same request: capped alike, no key added or lost
    assert by_position["messages"] == messages and by_position["max_tokens"] == 16_384
    cost = 2 * (PROMPT_TOKENS * 1.5e-7 + COMPLETION_TOKENS * 6e-7)
    wait_until(lambda: manager.get_current_cost("alice") >= cost * (1 - 1e-9))
    assert manager.get_current_cost("alice") == pytest.approx(cost)
    assert len(guard.pending_positionals) == 0


def test_a_sync_positional_call_is_capped_without_a_second_value(
    server: FakeOpenAI, manager: BudgetManager, register
) -> None:
    """The guard lowers the limit in litellm's keywords; the positional values stay positional."""
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager, cap_output=True))
    litellm.text_completion("Say hi", model=TEXT, api_base=server.url, api_key="k", user="alice")
    body = server.requests[-1]["body"]
    assert body["prompt"] in ("Say hi", ["Say hi"])
    assert body["max_tokens"] == litellm.model_cost["gpt-3.5-turbo-instruct"]["max_output_tokens"]


def test_cap_output_refuses_an_output_limit_given_by_position(
    server: FakeOpenAI, manager: BudgetManager, register
) -> None:
    """It could not be lowered: litellm passes positional arguments on as they are."""
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager, cap_output=True))
    parameters = list(inspect.signature(litellm.completion).parameters.values())
    names = [parameter.name for parameter in parameters]
    args = [parameter.default for parameter in parameters[: names.index("max_tokens") + 1]]
    args[:2] = ["openai/gpt-4o-mini", [{"role": "user", "content": "hi"}]]
    args[-1] = 100_000
    with pytest.raises(ConfigurationError, match="cap_output cannot lower max_tokens given by position"):
        litellm.completion(*args, api_base=server.url, api_key="k", user="alice")
    assert server.count == 0 and manager.get_current_cost("alice") == 0


class _Refusing(CustomLogger):
    """A callback whose deployment hook refuses every call, before the guard's hook runs."""

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        raise RuntimeError("refused by another callback")


def test_positionals_of_an_async_call_that_fails_before_the_guard_s_hook_are_dropped(
    server: FakeOpenAI, manager: BudgetManager, register
) -> None:
    manager.create_budget(1.0, "alice")
    litellm.callbacks.append(_Refusing())
    guard = register(BudgetGuard(manager))
    with pytest.raises(Exception, match="refused by another callback"):
        run(litellm.acompletion("openai/gpt-4o-mini", [{"role": "user", "content": "hi"}], user="alice"))
    wait_until(lambda: len(guard.pending_positionals) == 0)
    assert server.count == 0


def test_pending_positionals_are_bounded_and_say_what_they_drop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_PendingPositionals, "LIMIT", 2)
    pending = _PendingPositionals()
    with caplog.at_level(logging.WARNING, logger="litellm_budget_plugin.hooks"):
        for call_id in ("a", "b", "c"):
            pending.put(call_id, {"model": call_id})
    assert len(pending) == 2
    assert pending.pop("a") == {} and pending.pop("c") == {"model": "c"} and pending.pop("c") == {}
    assert any("async call a" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("function", "args", "named"),
    [
        ("completion", ("m", []), {"model": "m", "messages": []}),
        ("acompletion", ("m", [], [{"name": "f"}]), {"model": "m", "messages": [], "functions": [{"name": "f"}]}),
        ("text_completion", ("p", "m"), {"prompt": "p", "model": "m"}),
        ("atext_completion", ("p", "m"), {"prompt": "p", "model": "m"}),  # takes *args: text_completion's names
        ("embedding", ("m", ["x"]), {"model": "m", "input": ["x"]}),
        ("aembedding", ("m", ["x"]), {"model": "m", "input": ["x"]}),
        ("no_such_function", ("m",), {}),
    ],
)
def test_positionals_get_litellm_s_parameter_names(function: str, args: tuple[Any, ...], named: dict[str, Any]) -> None:
    assert named_positionals(function, args) == named
