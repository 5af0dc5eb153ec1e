"""What a request sends and turns on is priced: output limits in ``extra_body``, search fees of
models that search unasked, functions, response schemas, predictions, ``best_of``, images and
Anthropic's tool-use system prompt (issue 11, review items 2 and 6).

Each estimate is compared with what litellm itself charges (``completion_cost`` of a response
carrying the usage the provider would report), or with a local server billing what it receives.
"""

from __future__ import annotations

from collections.abc import Iterator

import litellm
import pytest
from litellm.types.utils import ModelResponse, PromptTokensDetailsWrapper, Usage

from litellm_budget_plugin import ConfigurationError, UnpricedModelError
from litellm_budget_plugin.pricing import (
    ANTHROPIC_TOOL_PROMPT_TOKENS,
    image_tokens,
    output_limits,
    output_token_limit,
    prices,
    worst_case,
)

MESSAGES = [{"role": "user", "content": "What is the news today?"}]


def _charged(model: str, usage: Usage, provider: str | None = None, **message: object) -> float:
    response = ModelResponse(
        model=model, usage=usage, choices=[{"message": {"role": "assistant", "content": "x", **message}}]
    )
    return float(litellm.completion_cost(completion_response=response, model=model, custom_llm_provider=provider))


# --- output limits ---------------------------------------------------------------------------


def test_output_limit_in_extra_body_is_read_and_the_largest_counts() -> None:
    request = {"max_tokens": 10, "extra_body": {"max_tokens": 16_000}}
    assert output_token_limit(request, "gpt-4o-mini") == 16_000
    assert output_token_limit({"max_tokens": 5000, "max_completion_tokens": 10}, "gpt-4o-mini") == 5000
    assert output_limits(request) == [(None, "max_tokens", 10), ("extra_body", "max_tokens", 16_000)]
    assert output_limits({"messages": []}) == []
    with pytest.raises(ConfigurationError, match=r"extra_body\[.max_tokens.\]"):
        output_token_limit({"extra_body": {"max_tokens": "16000"}}, "gpt-4o-mini")


def test_a_limit_in_extra_body_past_the_budget_is_refused(server, manager, register) -> None:
    from litellm_budget_plugin import BudgetExceededError
    from litellm_budget_plugin.guard import BudgetGuard

    server.bill_words = True
    server.completion_tokens = 16_000  # what gpt-4o-mini would write: $0.0096
    manager.create_budget(0.001, "alice")
    register(BudgetGuard(manager))
    with pytest.raises(BudgetExceededError) as refusal:
        litellm.completion(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            api_base=server.url,
            api_key="k",
            user="alice",
            extra_body={"max_tokens": 16_000},
        )
    assert refusal.value.estimate >= 16_000 * litellm.model_cost["gpt-4o-mini"]["output_cost_per_token"]
    assert server.count == 0


# --- search fees -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["perplexity/sonar", "perplexity/sonar-pro"])
def test_sonar_search_fee_counts_without_being_asked(model: str) -> None:
    worst = worst_case("completion", model, {"messages": MESSAGES, "max_tokens": 50})
    # litellm bills each query Perplexity reports at its low-context price; one request's fee at
    # its highest price covers one (and two) of them
    usage = Usage(
        prompt_tokens=10,
        completion_tokens=50,
        total_tokens=60,
        prompt_tokens_details=PromptTokensDetailsWrapper(web_search_requests=1),
    )
    assert worst.total >= _charged(model, usage, "perplexity")
    # the fee is held whether or not this litellm bills it (1.80 does not)
    assert worst.total > min(prices(model)["search_context_cost_per_query"].values())


@pytest.mark.parametrize("model", ["gpt-4o-search-preview", "gpt-4o-mini-search-preview", "gpt-5-search-api"])
def test_openai_search_models_are_held_one_search(model: str) -> None:
    if model not in litellm.model_cost:
        pytest.skip(f"this litellm's cost map has no {model}")
    worst = worst_case("completion", model, {"messages": MESSAGES, "max_tokens": 50})
    citation = {
        "type": "url_citation",
        "url_citation": {"url": "http://a", "title": "a", "start_index": 0, "end_index": 1},
    }
    charged = _charged(model, Usage(prompt_tokens=9, completion_tokens=50, total_tokens=59), annotations=[citation])
    assert worst.total >= charged
    search = prices(model).get("search_context_cost_per_query")
    if search:  # this litellm's map prices its searches (1.95's gpt-5-search-api entry does not)
        assert charged > min(search.values())


def test_a_plain_model_with_a_search_price_is_not_held_a_search() -> None:
    worst = worst_case("completion", "gpt-4o-mini", {"messages": MESSAGES, "max_tokens": 50})
    assert worst.total < 0.001


@pytest.fixture
def per_query_model() -> Iterator[str]:
    """A Gemini 3-style model: litellm bills each grounding query the model makes."""
    name = "gemini-per-query-test"
    litellm.register_model(
        {
            name: {
                "litellm_provider": "gemini",
                "mode": "chat",
                "input_cost_per_token": 1e-6,
                "output_cost_per_token": 2e-6,
                "search_context_cost_per_query": {"search_context_size_medium": 0.014},
                "web_search_billing_unit": "per_query",
            }
        }
    )
    yield name
    litellm.model_cost.pop(name, None)


@pytest.mark.parametrize(
    "extra", [{"tools": [{"googleSearch": {}}]}, {"web_search_options": {"search_context_size": "high"}}]
)
def test_gemini_billed_per_grounding_query_is_refused(per_query_model: str, extra: dict[str, object]) -> None:
    model = per_query_model
    six_queries = Usage(
        prompt_tokens=10,
        completion_tokens=50,
        total_tokens=60,
        prompt_tokens_details=PromptTokensDetailsWrapper(web_search_requests=6),
    )
    assert _charged(model, six_queries, "gemini") >= 6 * 0.014  # what litellm would bill
    assert worst_case("completion", model, {"messages": MESSAGES, "max_tokens": 50}).total < 0.001  # no search
    with pytest.raises(UnpricedModelError, match="Google Search grounding queries") as refusal:
        worst_case("completion", model, {"messages": MESSAGES, "max_tokens": 50, **extra})
    assert refusal.value.model == model


# --- request parts ---------------------------------------------------------------------------

FUNCTIONS = [
    {"name": f"f{i}", "description": "word " * 500, "parameters": {"type": "object", "properties": {}}}
    for i in range(20)
]


def test_functions_are_counted_like_tools() -> None:
    worst = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10, "functions": FUNCTIONS})
    tools = [{"type": "function", "function": function} for function in FUNCTIONS]
    counted = litellm.token_counter(model="gpt-4o", messages=MESSAGES, tools=tools)
    assert counted > 10_000
    assert worst.prompt_cost >= counted * litellm.model_cost["gpt-4o"]["input_cost_per_token"]


@pytest.mark.parametrize(
    "key,value",
    [
        (
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "word " * 5000}}},
        ),
        ("tool_choice", {"type": "function", "function": {"name": "word " * 5000}}),
        ("system", "word " * 5000),
    ],
    ids=["response_format", "tool_choice", "system"],
)
def test_prompt_parts_beside_messages_are_counted(key: str, value: object) -> None:
    base = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10})
    worst = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10, key: value})
    assert worst.prompt_cost - base.prompt_cost >= 5000 * litellm.model_cost["gpt-4o"]["input_cost_per_token"]


def test_a_pydantic_response_format_is_counted_by_its_schema() -> None:
    from pydantic import BaseModel, Field

    class Answer(BaseModel):
        text: str = Field(description="word " * 5000)

    base = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10})
    worst = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10, "response_format": Answer})
    assert worst.prompt_cost - base.prompt_cost >= 5000 * litellm.model_cost["gpt-4o"]["input_cost_per_token"]


def test_best_of_candidates_are_all_billed() -> None:
    request = {"prompt": "hi", "max_tokens": 100}
    one = worst_case("text_completion", "gpt-3.5-turbo-instruct", request)
    five = worst_case("text_completion", "gpt-3.5-turbo-instruct", {**request, "best_of": 5, "n": 2})
    assert five.output_price == pytest.approx(5 * one.output_price)


def test_rejected_prediction_tokens_are_held_at_the_output_price() -> None:
    prediction = {"type": "content", "content": "word " * 1000}
    base = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10})
    worst = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10, "prediction": prediction})
    assert worst.prompt_cost - base.prompt_cost >= 1000 * litellm.model_cost["gpt-4o"]["output_cost_per_token"]


@pytest.mark.parametrize("key,bad", [("n", "2"), ("n", 2.5), ("n", 0), ("best_of", -1), ("n", True)])
def test_a_bad_number_of_choices_is_named(key: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=key):
        worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10, key: bad})


# --- images and Anthropic's tool prompt ------------------------------------------------------


@pytest.mark.parametrize(
    "model,at_least",
    [
        ("gpt-4o-mini", 2_833 + 5_667 * 8),  # OpenAI: base + per tile, 8 tiles at most
        ("gpt-4o", 85 + 170 * 8),
        ("gpt-4.1-nano", 1_536 * 2.46),  # OpenAI: 1,536 patches x multiplier
        ("o4-mini", 1_536 * 1.72),
        ("claude-sonnet-4-5", 1_600),  # Anthropic: about 1,600 after resizing
        ("gemini-2.5-pro", 1_120),  # Gemini 3 high media resolution; 258 per 768-px tile
    ],
)
def test_an_image_is_held_at_its_models_largest_count(model: str, at_least: float) -> None:
    assert image_tokens(model) >= at_least
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    text = worst_case("completion", model, {"messages": MESSAGES, "max_tokens": 10})
    with_image = worst_case(
        "completion",
        model,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, image]}], "max_tokens": 10},
    )
    price = litellm.model_cost[model]["input_cost_per_token"]
    assert with_image.prompt_cost - text.prompt_cost >= at_least * price * 0.99


def test_anthropics_tool_prompt_is_counted_when_tools_are_given() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    model = "claude-sonnet-4-5"
    base = worst_case("completion", model, {"messages": MESSAGES, "max_tokens": 10})
    worst = worst_case("completion", model, {"messages": MESSAGES, "max_tokens": 10, "tools": tools})
    price = litellm.model_cost[model]["input_cost_per_token"]
    assert worst.prompt_cost - base.prompt_cost >= ANTHROPIC_TOOL_PROMPT_TOKENS * price
    gpt = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10, "tools": tools})
    gpt_base = worst_case("completion", "gpt-4o", {"messages": MESSAGES, "max_tokens": 10})
    assert gpt.prompt_cost - gpt_base.prompt_cost < 100 * litellm.model_cost["gpt-4o"]["input_cost_per_token"]
