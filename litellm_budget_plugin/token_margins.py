"""How much a provider's prompt count can exceed ours, per provider family.

Estimates count every prompt with tiktoken (``pricing.encoding_for``: cl100k_base, or
o200k_base for OpenAI's newer models). A provider whose tokenizer splits text more finely
bills more tokens than we counted, so the prompt count is multiplied by a margin.

Margins are measured, not guessed, where a tokenizer is at hand: ``tests/test_token_margins.py``
counts each sample of ``tests/data/tokenizer_corpus`` (code, JSON, English prose, and the
Universal Declaration of Human Rights in 15 languages) with the tokenizers litellm ships
and with ours; a family's margin is its largest ratio (provider count / our count) plus
5% headroom, rounded up to the next 0.05, and the test fails if any sample exceeds it.
The corpus maximum is not a proof for every text (a short string in a rare script can
split worse), but each sample is a few KB of real text.

Families with no tokenizer shipped with litellm (Gemini, Llama, Mistral, Cohere and the
rest) cannot be measured offline; they get the largest measured margin, a rule and not a
measurement. The margin multiplies the whole prompt count, chat framing included: that
framing is litellm's own rule (3 tokens per request and per message), not the provider's.
"""

from __future__ import annotations

import functools
import math
from typing import Final

import litellm
import tiktoken.model

from . import pricing

HEADROOM: Final = 1.05
_STEP: Final = 0.05


def margin_from_ratio(ratio: float) -> float:
    """The margin for a measured worst ratio: 5% headroom, rounded up to the next 0.05."""
    return round(math.ceil(round(ratio * HEADROOM / _STEP, 9)) * _STEP, 2)


# Largest provider/ours ratio over the corpus, with the sample it came from (cl100k_base ours).
MEASURED_RATIOS: Final = {
    # litellm's anthropic_tokenizer.json, which litellm.token_counter uses for Claude models
    "anthropic": (1.822, "udhr_th"),
    # litellm's deepseek_tokenizer.json (DeepSeek V3/R1); absent from litellm 1.80
    "deepseek": (1.087, "data_json"),
    # OpenAI models on o200k_base that our name rule counts with cl100k_base (gpt-oss, gpt-image-1...)
    "openai-o200k": (1.008, "code_python"),
    # GPT-3-era OpenAI models (r50k_base / p50k_base), measured with p50k_base, which litellm ships
    "openai-legacy": (2.442, "udhr_ru"),
}
_PROVIDER_TOKENIZERS: Final = ("anthropic", "deepseek")

_KNOWN_MARGINS: Final = {
    # tiktoken is the model's tokenizer and we count with its encoding: the count is exact
    "openai": 1.0,
    # a price the user gave (register_price) or an OpenAI-provider name no rule knows:
    # counted as litellm.token_counter counts it, with no margin (see the README)
    "openai-compatible": 1.0,
    **{family: margin_from_ratio(ratio) for family, (ratio, _) in MEASURED_RATIOS.items()},
}
# Not measured, as no tokenizer for these families ships with litellm: the largest margin
# measured for a provider's own tokenizer (the GPT-3 encodings are no guide to today's models).
MARGINS: Final = {**_KNOWN_MARGINS, "unmeasured": max(_KNOWN_MARGINS[family] for family in _PROVIDER_TOKENIZERS)}

_OPENAI_PROVIDERS: Final = frozenset({"openai", "text-completion-openai", "custom_openai"})
_OPENAI_NAME_PREFIXES: Final = ("gpt-", "chatgpt-", "o1", "o3", "o4", "codex-", "computer-use-", "ft:gpt-")
# tiktoken's encodings for a model, by the encoding whose text counts they share
_SAME_TEXT_ENCODING: Final = {"o200k_harmony": "o200k_base", "r50k_base": "p50k_base", "gpt2": "p50k_base"}
_FAMILY_OF_ENCODING: Final = {"o200k_base": "openai-o200k", "p50k_base": "openai-legacy"}


def _provider(model: str) -> str:
    """litellm's provider for ``model``: its price entry's, else the name's ``provider/`` prefix."""
    entry = litellm.model_cost.get(model) or litellm.model_cost.get(model.rsplit("/", 1)[-1]) or {}
    provider = entry.get("litellm_provider")
    if provider:
        return str(provider)
    return model.split("/", 1)[0] if "/" in model else ""


def family(model: str) -> str:
    """The tokenizer family of ``model``: a key of :data:`MARGINS`."""
    lowered = model.lower()
    bare = lowered.rsplit("/", 1)[-1]
    if "claude" in lowered:  # Anthropic, and Claude on Bedrock, Vertex AI, OpenRouter...
        return "anthropic"
    if "deepseek" in lowered and "distill" not in lowered:  # distills use Llama/Qwen tokenizers
        return "deepseek"
    try:
        encoding = tiktoken.model.encoding_name_for_model(bare)
    except KeyError:
        encoding = None
    ours = pricing.encoding_for(model).name
    if encoding is not None:
        encoding = _SAME_TEXT_ENCODING.get(encoding, encoding)
        if encoding == ours:
            return "openai"
        # measured against cl100k_base only; the test checks no priced model is counted otherwise
        return _FAMILY_OF_ENCODING.get(encoding, "unmeasured") if ours == "cl100k_base" else "unmeasured"
    if bare.startswith(_OPENAI_NAME_PREFIXES):
        return "openai" if ours == "o200k_base" else "openai-o200k"
    if _provider(model) in _OPENAI_PROVIDERS:
        return "openai-compatible"
    return "unmeasured"


@functools.lru_cache(maxsize=4096)
def prompt_margin(model: str) -> float:
    """What multiplies our prompt count of ``model`` so that it is ≥ its provider's count."""
    return MARGINS[family(model)]
