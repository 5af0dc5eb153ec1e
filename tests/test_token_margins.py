"""The prompt-count margins of token_margins.py hold on a fixed corpus of real text.

Each sample of tests/data/tokenizer_corpus is counted with our tiktoken encoding and with
the tokenizers litellm ships; our count times the family's margin must reach the
provider's count for every sample, and each margin must be the one its measured worst
ratio gives (so the table can neither fall behind the corpus nor drift above it).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import litellm
import pytest
import tiktoken
from tokenizers import Tokenizer

from litellm_budget_plugin import BudgetManager, pricing, token_margins
from litellm_budget_plugin._price_table import Options

CORPUS_DIR = Path(__file__).parent / "data" / "tokenizer_corpus"
CORPUS = {path.stem: path.read_text(encoding="utf-8") for path in sorted(CORPUS_DIR.glob("*.txt"))}
LANGUAGES = {"ar", "de", "el", "en", "es", "fr", "he", "hi", "ja", "ko", "ru", "th", "tr", "vi", "zh"}
OUR_ENCODING = tiktoken.get_encoding("cl100k_base")
# family -> the tokenizer file litellm ships for it
SHIPPED = {"anthropic": "anthropic_tokenizer.json", "deepseek": "deepseek_tokenizer.json"}
# family -> the tiktoken encoding (litellm ships its file) that the family's models use
TIKTOKEN_FAMILIES = {"openai-o200k": "o200k_base", "openai-legacy": "p50k_base"}


def our_count(text: str) -> int:
    return len(OUR_ENCODING.encode(text, disallowed_special=()))


@pytest.fixture(scope="session")
def provider_tokenizers() -> dict[str, Tokenizer]:
    """The tokenizers this litellm ships, loaded once (litellm 1.80 has no deepseek file)."""
    folder = resources.files("litellm.litellm_core_utils.tokenizers")
    return {
        family: Tokenizer.from_str(folder.joinpath(name).read_text(encoding="utf-8"))
        for family, name in SHIPPED.items()
        if folder.joinpath(name).is_file()
    }


def provider_counts(family: str, tokenizers: dict[str, Tokenizer]) -> dict[str, int]:
    """Each sample's count by the family's tokenizer: as litellm counts, specials included."""
    if family in TIKTOKEN_FAMILIES:
        encoding = tiktoken.get_encoding(TIKTOKEN_FAMILIES[family])
        return {name: len(encoding.encode(text, disallowed_special=())) for name, text in CORPUS.items()}
    if family not in tokenizers:
        pytest.skip(f"this litellm ships no {SHIPPED[family]}")
    return {name: len(tokenizers[family].encode(text).ids) for name, text in CORPUS.items()}


def test_corpus_has_code_prose_and_many_languages() -> None:
    assert {"code_python", "code_lua", "data_json", "prose_readme_en"} <= CORPUS.keys()
    assert {f"udhr_{language}" for language in LANGUAGES} <= CORPUS.keys()
    assert all(500 <= len(text) <= 6000 for text in CORPUS.values())


@pytest.mark.parametrize("family", sorted(token_margins.MEASURED_RATIOS))
def test_margin_bounds_the_providers_count_of_every_sample(
    family: str, provider_tokenizers: dict[str, Tokenizer]
) -> None:
    margin = token_margins.MARGINS[family]
    counts = provider_counts(family, provider_tokenizers)
    short = {
        name: (counts[name], our_count(text))
        for name, text in CORPUS.items()
        if math.ceil(our_count(text) * margin) < counts[name]
    }
    assert not short, f"{family} margin {margin} is short of (provider, ours) counts {short}"

    ratios = {name: counts[name] / our_count(text) for name, text in CORPUS.items()}
    worst = max(ratios, key=ratios.__getitem__)
    assert (round(ratios[worst], 3), worst) == token_margins.MEASURED_RATIOS[family]
    assert margin == token_margins.margin_from_ratio(ratios[worst])


def test_families_without_a_shipped_tokenizer_get_the_largest_measured_margin() -> None:
    largest = max(token_margins.MARGINS[family] for family in SHIPPED)
    assert token_margins.MARGINS["unmeasured"] == largest > 1
    for model in ("gemini/gemini-2.5-pro", "mistral/mistral-large-latest", "command-r", "groq/llama-3.3-70b-versatile"):
        assert token_margins.family(model) == "unmeasured"
        assert token_margins.prompt_margin(model) == largest


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("claude-sonnet-4-5", "anthropic"),
        ("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic"),
        ("vertex_ai/claude-opus-4", "anthropic"),
        ("deepseek/deepseek-chat", "deepseek"),
        ("gpt-oss-120b", "openai-o200k"),
        ("gpt-image-1", "openai-o200k"),
        ("text-davinci-003", "openai-legacy"),
        ("azure/ada", "openai-legacy"),
        ("openai/a-private-model", "openai-compatible"),
        ("azure/mistral-large-latest", "unmeasured"),
        ("gpt-4o-mini", "openai"),
        ("azure/gpt-4o", "openai"),
        ("gpt-3.5-turbo", "openai"),
        ("text-embedding-3-small", "openai"),
    ],
)
def test_family_follows_the_model(model: str, family: str) -> None:
    assert token_margins.family(model) == family


def test_margins_were_measured_against_the_encoding_we_count_with() -> None:
    """Every priced model with a margin is counted with cl100k_base, the base of the measured
    ratios (an o200k count would need other, larger margins)."""
    other_base = sorted(
        model
        for model in litellm.model_cost
        if token_margins.family(model) not in ("openai", "openai-compatible")
        and pricing.encoding_for(model).name != "cl100k_base"
    )
    assert other_base == []


def test_openai_models_get_no_margin() -> None:
    messages = [{"role": "user", "content": CORPUS["udhr_ja"]}]
    for model in ("gpt-4o-mini", "gpt-4", "openrouter/openai/gpt-4o"):
        assert token_margins.prompt_margin(model) == 1.0
        price = pricing.price_table(model).rates(Options(), 0).input  # its snapshots' prices included
        estimate = pricing.estimate_cost(model, messages=messages)
        assert estimate == pytest.approx(pricing.count_message_tokens(messages, model) * price, rel=1e-12)


def claude_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


@pytest.mark.parametrize("sample", sorted(CORPUS))
def test_claude_estimate_is_at_least_litellms_count_by_the_anthropic_tokenizer(sample: str) -> None:
    model = "claude-sonnet-4-5"  # litellm.token_counter counts it with anthropic_tokenizer.json
    messages = claude_messages(CORPUS[sample])
    price = float(pricing.prices(model)["input_cost_per_token"])
    provider_tokens = litellm.token_counter(model=model, messages=messages)
    assert provider_tokens > litellm.token_counter(model="gpt-4", messages=messages) or sample.startswith(
        ("udhr_he", "udhr_ja", "udhr_vi", "udhr_zh")  # the few samples Claude's tokenizer splits less
    )
    worst = pricing.worst_case("completion", model, {"messages": messages, "max_tokens": 10})
    assert worst.prompt_cost >= provider_tokens * price
    assert worst.prompt_cost == pytest.approx(
        math.ceil(pricing.count_message_tokens(messages, model) * token_margins.MARGINS["anthropic"]) * price
    )


def test_projected_cost_applies_the_margin(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=10, user="alice")
    messages = claude_messages(CORPUS["udhr_th"])
    price = float(pricing.prices("claude-sonnet-4-5")["input_cost_per_token"])
    projected = manager.projected_cost("claude-sonnet-4-5", messages, "alice")
    assert projected >= litellm.token_counter(model="claude-sonnet-4-5", messages=messages) * price
    assert projected == pytest.approx(
        math.ceil(pricing.count_message_tokens(messages, "claude-sonnet-4-5") * token_margins.MARGINS["anthropic"])
        * price
    )
    gpt_4_price = float(pricing.prices("gpt-4")["input_cost_per_token"])
    assert manager.projected_cost("gpt-4", messages, "alice") == pytest.approx(
        pricing.count_message_tokens(messages, "gpt-4") * gpt_4_price, rel=1e-12
    )
