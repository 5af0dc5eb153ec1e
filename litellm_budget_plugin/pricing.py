"""Cost estimates from requests and actual costs from responses.

Estimates run on every guarded call, so they avoid ``litellm.token_counter`` and
``litellm.cost_per_token`` (25-140 µs each): tokens are counted with cached tiktoken
encodings following litellm's counting rules, and prices are read from ``litellm.model_cost``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import litellm
import litellm.litellm_core_utils.default_encoding
import tiktoken

from . import token_margins
from ._price_table import (
    Options,
    Parts,
    PriceTable,
    call_price_table,
    check_price,
    find_entry,
    price_table,
    request_tier,
    resolved_model,
)
from ._searches import search_fees, searches_unasked, tool_searches
from .errors import ConfigurationError, UnpricedModelError

# litellm's chat counting: 3 tokens of priming per request, 3 per message, 1 per name.
_TOKENS_PER_REQUEST = 3
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
# The most prompt tokens one image part can bill, by the first rule matching the model's name
# (lowercased), from each provider's documented image tokenization (sources in the README):
_IMAGE_TOKEN_BOUNDS = (
    # OpenAI tiles: base + per 512-px tile at high detail, at most 8 tiles (2048x768 after resizing)
    ("gpt-4o-mini", 2_833 + 5_667 * 8),  # 48,169
    # OpenAI patches: at most 1,536 32-px patches times the model's multiplier (up to 2.46)
    *(
        (name, math.ceil(1_536 * 2.46))
        for name in ("gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-5-mini", "gpt-5-nano")
    ),
    *((name, 85 + 170 * 8) for name in ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "o1", "o3")),  # 1,445
    # Anthropic: width x height / 750, resized to ~1,600 tokens (Claude 3-4.x); later models take
    # larger images (about 4,000 tokens measured for a 12 MP photo): held at 4,800
    ("claude", 4_800),
    # Gemini: 258 tokens per 768-px tile (Gemini 3 at high media resolution: 1,120), with no
    # published largest image: held at 24 tiles (a 4032x3024 photo)
    ("gemini", 258 * 24),
)
# Any other model (no published bound: newer OpenAI models bill up to ~14,400 at full detail)
_DEFAULT_IMAGE_TOKENS = 16_384
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_FILE_PARTS = frozenset({"file", "input_file", "document", "video_url", "video"})
# Audio tokens of an input_audio part, bounded from its size: at most 32 tokens a second
# (Gemini's rate, the highest published; OpenAI's is lower) of audio at least 500 bytes a
# second (4 kbit/s, below the lowest bit rate of the formats providers take: mp3 8, opus 6).
_AUDIO_TOKENS_PER_SECOND = 32
_AUDIO_BYTES_PER_SECOND = 500
# The output tokens assumed for a request that names no output limit, on a model whose cost map
# entry gives none either (the guard holds a model's own maximum when the map has one).
DEFAULT_OUTPUT_TOKEN_CAP = 4096
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")


@functools.lru_cache(maxsize=64)
def encoding_for(model: str) -> tiktoken.Encoding:
    bare = model.rsplit("/", 1)[-1]
    name = "o200k_base" if bare.startswith(_O200K_PREFIXES) else "cl100k_base"
    return tiktoken.get_encoding(name)


@functools.lru_cache(maxsize=4096)
def _count_cached(text: str, encoding_name: str) -> int:
    return len(tiktoken.get_encoding(encoding_name).encode(text, disallowed_special=()))


_CACHED_TEXT_LENGTH = 4096


def count_text_tokens(text: str, model: str) -> int:
    """Tokens of one string; short repeated strings (system prompts) are cached."""
    name = encoding_for(model).name
    if len(text) <= _CACHED_TEXT_LENGTH:
        return _count_cached(text, name)
    return len(encoding_for(model).encode(text, disallowed_special=()))


def _content_tokens(content: object, model: str, parts: Parts | None = None) -> int:
    """Tokens of a message value: a string, a list of parts (multimodal), or nested data."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content, model)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, Mapping):
                total += _content_tokens(part, model, parts)
                continue
            kind = part.get("type")
            if parts is not None and part.get("cache_control") is not None:
                parts.caching = True
            if kind in _IMAGE_PARTS:
                total += image_tokens(model)
                if parts is not None:
                    parts.images += 1
            elif kind == "input_audio":
                size = _audio_bytes(part.get("input_audio"))
                total += math.ceil(size * _AUDIO_TOKENS_PER_SECOND / _AUDIO_BYTES_PER_SECOND)
                if parts is not None:
                    parts.audio_bytes += size
            elif isinstance(part.get("text"), str):
                total += count_text_tokens(part["text"], model)
            else:
                if parts is not None and kind in _FILE_PARTS:
                    parts.files += 1
                total += _content_tokens(part, model, parts)
        return total
    # tool calls, function calls, and anything else structured: count its JSON text
    return count_text_tokens(json.dumps(content, default=str, separators=(",", ":")), model)


@functools.lru_cache(maxsize=1024)
def image_tokens(model: str) -> int:
    """The most prompt tokens one image part of a ``model`` call can bill (``_IMAGE_TOKEN_BOUNDS``)."""
    name = model.lower()
    return next((tokens for rule, tokens in _IMAGE_TOKEN_BOUNDS if rule in name), _DEFAULT_IMAGE_TOKENS)


def _audio_bytes(audio: object) -> int:
    """Bytes of an input_audio part's base64 data (its JSON size if it is not there)."""
    data = audio.get("data") if isinstance(audio, Mapping) else None
    if isinstance(data, str):
        return len(data) * 3 // 4 + 3
    return len(json.dumps(audio, default=str))


def count_message_tokens(messages: Iterable[Mapping[str, Any]], model: str, parts: Parts | None = None) -> int:
    encoding = encoding_for(model).name
    total = _TOKENS_PER_REQUEST
    for message in messages:
        if type(message) is not dict and not isinstance(message, Mapping):  # a dict skips the ABC check
            raise ConfigurationError(f"each message must be a mapping, got {type(message).__name__}")
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str) and len(value) <= _CACHED_TEXT_LENGTH:  # most values: one cache lookup
                total += _count_cached(value, encoding)
            else:
                total += _content_tokens(value, model, parts)
            if key == "name":
                total += _TOKENS_PER_NAME
            elif key == "cache_control" and parts is not None:
                parts.caching = True
    return total


def prices(model: str) -> Mapping[str, Any]:
    """litellm's price entry for ``model`` (checked: every price in it usable), looked up as
    written or without its provider."""
    price_table(model)
    return find_entry(model)


def register_price(
    model: str,
    input_cost_per_token: float,
    output_cost_per_token: float,
    max_output_tokens: int | None = None,
) -> None:
    """Give a model a price (both here and in litellm, so actual costs agree with estimates)."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(f"register_price needs a model name, got {model!r}")
    if max_output_tokens is not None and (
        isinstance(max_output_tokens, bool) or not isinstance(max_output_tokens, int) or max_output_tokens < 0
    ):
        raise ConfigurationError(
            f"max_output_tokens of {model!r} must be a non-negative integer, got {max_output_tokens!r}"
        )
    check_price(model, "input_cost_per_token", input_cost_per_token, required=True)
    check_price(model, "output_cost_per_token", output_cost_per_token, required=True)
    entry: dict[str, Any] = {
        "input_cost_per_token": input_cost_per_token,
        "output_cost_per_token": output_cost_per_token,
        "litellm_provider": "openai",
        "mode": "chat",
    }
    if max_output_tokens is not None:
        entry["max_output_tokens"] = max_output_tokens
    PriceTable(model, entry)  # every price usable, before litellm sees any
    litellm.register_model({model: entry})


# The request keys that limit output, in the call's keyword arguments and in its ``extra_body``
# (which litellm merges into the body it sends the provider).
OUTPUT_LIMIT_KEYS = ("max_completion_tokens", "max_tokens")


class OutputLimit(NamedTuple):
    """One output limit a request gives: ``section`` None for its keyword arguments,
    ``"extra_body"`` for the keys litellm sends over them; the provider may honour any."""

    section: str | None
    key: str
    tokens: int


def output_limits(request: Mapping[str, Any]) -> list[OutputLimit]:
    """Every output limit the request gives (a bad one raises ConfigurationError naming it)."""
    limits: list[OutputLimit] = []
    extra = request.get("extra_body")
    for section, values in ((None, request), ("extra_body", extra if isinstance(extra, Mapping) else {})):
        for key in OUTPUT_LIMIT_KEYS:
            value = values.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                where = key if section is None else f"{section}[{key!r}]"
                raise ConfigurationError(f"{where} must be a non-negative integer, got {value!r}")
            limits.append(OutputLimit(section, key, value))
    return limits


def output_token_limit(request: Mapping[str, Any], model: str, cap: int = DEFAULT_OUTPUT_TOKEN_CAP) -> int:
    """The most output tokens the request can produce per choice: the largest limit it gives
    (:func:`output_limits`), else the model's maximum capped at ``cap``."""
    if "extra_body" not in request and "max_completion_tokens" not in request:  # the usual request
        value = request.get("max_tokens")
        if type(value) is int and value >= 0:
            return value
    limits = output_limits(request)
    if limits:
        return max(limit.tokens for limit in limits)
    return min(most_output_tokens(model) or cap, cap)


class WorstCase(NamedTuple):
    """The most a call can cost, split so that a budget can cap its output.

    ``prompt_cost`` is what the call costs before any output (its prompt at the worst price
    that can apply, and per-request fees); each output token, across all ``n`` choices,
    costs at most ``output_price``; ``output_tokens`` is the output limit per choice assumed.
    """

    prompt_cost: float
    output_price: float
    output_tokens: int

    @property
    def total(self) -> float:
        cost = self.prompt_cost + self.output_price * self.output_tokens
        return cost if math.isfinite(cost) else math.inf

    @property
    def output_cost(self) -> float:
        cost = self.output_price * self.output_tokens
        return cost if math.isfinite(cost) else math.inf

    def output_tokens_for(self, amount: float) -> int:
        """The most output tokens per choice that ``amount`` pays for after the prompt."""
        if self.output_price <= 0:
            return self.output_tokens
        return max(0, min(self.output_tokens, math.floor((amount - self.prompt_cost) / self.output_price)))


_CHAT_CALLS = frozenset({"completion", "acompletion"})
_TEXT_CALLS = frozenset({"text_completion", "atext_completion"})
_EMBEDDING_CALLS = frozenset({"embedding", "aembedding"})
OUTPUT_CALLS = _CHAT_CALLS | _TEXT_CALLS


def worst_case(
    call_type: str,
    model: str,
    request: Mapping[str, Any],
    output_token_cap: int = DEFAULT_OUTPUT_TOKEN_CAP,
) -> WorstCase:
    """The worst case of a litellm call of ``call_type`` whose arguments, by name, are
    ``request`` (the guard names positional ones); other call types cost nothing up front."""
    if call_type in _CHAT_CALLS:
        return _worst_case(model, request, output_token_cap, messages=request.get("messages") or [])
    if call_type in _TEXT_CALLS:
        return _worst_case(model, request, output_token_cap, prompt=request.get("prompt"))
    if call_type in _EMBEDDING_CALLS:
        return _worst_case(model, request, None, prompt=request.get("input"))
    return WorstCase(0.0, 0.0, 0)


def _worst_case(
    model: str,
    request: Mapping[str, Any],
    output_token_cap: int | None,
    *,
    messages: Iterable[Mapping[str, Any]] | None = None,
    prompt: object = None,
) -> WorstCase:
    table = call_price_table(model, request)
    model = resolved_model(model)  # the model litellm calls: its tokenizer counts the prompt
    parts = Parts()
    if messages is not None:
        prompt_tokens = count_message_tokens(messages, model, parts)
    else:
        prompt_tokens = _content_tokens(prompt, model, parts)
    tool_prompt = 0  # counted by the provider, so no tokenizer margin
    if not _PROMPT_KEYS.isdisjoint(request):
        prompt_tokens += _request_prompt_tokens(request, model, parts)
        if (request.get("tools") or request.get("functions")) and _is_anthropic(model):
            tool_prompt = ANTHROPIC_TOOL_PROMPT_TOKENS
    # The prompt's token count, once, with the provider's tokenizer margin: every price,
    # tier and fee below is read at this size.
    prompt_tokens = math.ceil(prompt_tokens * token_margins.prompt_margin(model)) + tool_prompt
    return priced_worst_case(table, request, prompt_tokens, parts, output_token_cap)


# What a request sends as prompt besides its messages: tool and function definitions, the tool
# choice, a response schema, and a top-level system prompt (passed through to Anthropic).
_PROMPT_KEYS = frozenset({"tools", "functions", "tool_choice", "response_format", "system"})
# The system prompt Anthropic adds when a request has tools, at its largest in Anthropic's
# per-model table (Claude 3 Opus, tool_choice auto: 530 tokens; Claude 4.x: 346).
ANTHROPIC_TOOL_PROMPT_TOKENS = 530


def _request_prompt_tokens(request: Mapping[str, Any], model: str, parts: Parts) -> int:
    """Tokens of the request's :data:`_PROMPT_KEYS`, noting the searches its tools can make."""
    total = 0
    for key in _PROMPT_KEYS:
        value = request.get(key)
        if value is None:
            continue
        if isinstance(value, type) and hasattr(value, "model_json_schema"):  # a pydantic response_format
            value = value.model_json_schema()
        total += _content_tokens(value, model, parts if key == "system" else None)
    tools = request.get("tools")
    if tools:
        parts.searches, parts.maps = tool_searches(tools, parts)
    return total


@functools.lru_cache(maxsize=1024)
def _is_anthropic(model: str) -> bool:
    return token_margins.family(model) == "anthropic"


# Request keys that change prices, fees or the number of outputs: a request with none of them
# (the usual one) skips reading each.
_PRICED_KEYS = frozenset(
    {
        "service_tier",
        "modalities",
        "audio",
        "cache_control_injection_points",
        "web_search_options",
        "speed",
        "n",
        "best_of",
        "prediction",
    }
)


def priced_worst_case(
    table: PriceTable,
    request: Mapping[str, Any],
    prompt_tokens: int,
    parts: Parts,
    output_token_cap: int | None,
) -> WorstCase:
    """The worst case of a request whose prompt is ``prompt_tokens`` tokens holding ``parts``."""
    if table.unbounded is not None:
        raise UnpricedModelError(table.model, table.unbounded)
    if parts.files and table.video_second_fee:
        raise UnpricedModelError(table.model, "input_cost_per_video_per_second")
    # The usual request (text only, none of the priced keys) reads no options and no fees it cannot have.
    plain = _PRICED_KEYS.isdisjoint(request) and not (
        parts.images or parts.audio_bytes or parts.files or parts.caching or parts.searches or parts.maps
    )
    multiplier = table.multiplier
    fees = table.request_fee
    if plain:
        rates = table.rates(_NO_OPTIONS, prompt_tokens)
        if table.search_fee and searches_unasked(table):
            fees += table.search_fee
    else:
        rates = table.rates(_options(request, parts), prompt_tokens)
        if request.get("speed") == "fast":
            multiplier *= table.fast_multiplier
        fees += parts.images * table.image_fee + parts.audio_bytes / _AUDIO_BYTES_PER_SECOND * table.audio_second_fee
        if table.search_fee or table.maps_fee:
            fees += search_fees(table, request, parts)
    if table.residency_multiplier != 1.0 and _regional_api_base(request):
        multiplier *= table.residency_multiplier
    prompt_cost = (prompt_tokens * rates.input + fees) * multiplier
    if output_token_cap is None:
        return WorstCase(prompt_cost if math.isfinite(prompt_cost) else math.inf, 0.0, 0)
    output_tokens = output_token_limit(request, table.model, output_token_cap)
    output_price = rates.output * multiplier
    if not plain:
        output_price *= _choices(request)
        prediction = request.get("prediction")
        if prediction is not None:  # OpenAI bills a prediction's rejected tokens as output
            prompt_cost += _content_tokens(prediction, table.model) * output_price
    return WorstCase(prompt_cost if math.isfinite(prompt_cost) else math.inf, output_price, output_tokens)


def _choices(request: Mapping[str, Any]) -> int:
    """Outputs the provider bills: ``n``, or ``best_of`` candidates (text completions) if more."""
    most = 1
    for key in ("n", "best_of"):
        value = request.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{key} must be a positive integer, got {value!r}")
        most = max(most, value)
    return most


_NO_OPTIONS = Options()
_REGIONAL_HOSTS = ("://eu.", "://us.", "://gov.")


def _regional_api_base(request: Mapping[str, Any]) -> bool:
    """Whether the call goes to an OpenAI regional or FedRAMP host (litellm prices those higher)."""
    base = request.get("api_base") or request.get("base_url") or litellm.api_base
    return bool(base) and isinstance(base, str) and any(host in base for host in _REGIONAL_HOSTS)


def _options(request: Mapping[str, Any], parts: Parts) -> Options:
    """The request's choices that change prices (documented in the README's pricing section)."""
    tier = request_tier(request.get("service_tier"))
    modalities = request.get("modalities") or ()
    caching = parts.caching or request.get("cache_control_injection_points") is not None
    audio_out = "audio" in modalities or request.get("audio") is not None
    if not (tier or caching or audio_out or modalities or parts.images or parts.audio_bytes or parts.files):
        return _NO_OPTIONS
    return Options(
        tier=tier,
        caching=caching,
        audio=bool(parts.audio_bytes or parts.files),
        image=bool(parts.images or parts.files),
        video=bool(parts.files),
        audio_out=audio_out,
        image_out="image" in modalities,
    )


def estimate_cost(
    model: str,
    *,
    messages: Iterable[Mapping[str, Any]] | None = None,
    prompt: object = None,
    output_tokens: int = 0,
    n: int = 1,
) -> float:
    """Worst-case cost of a call: its prompt plus ``n`` x ``output_tokens`` output tokens."""
    request = {"max_tokens": output_tokens, "n": n}
    return _worst_case(model, request, output_tokens, messages=messages, prompt=prompt).total


def response_cost(response: Any, model: str | None = None) -> float:
    """The actual cost of a response: litellm's own figure, else its usage at our worst prices."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if isinstance(cost, int | float) and math.isfinite(cost) and cost >= 0:
        return float(cost)
    usage = getattr(response, "usage", None)
    name = model or getattr(response, "model", None)
    if usage is None or not name:
        raise ConfigurationError("response carries neither a cost nor usage and a model")
    prompt = getattr(usage, "prompt_tokens", 0) or 0
    tier = getattr(response, "service_tier", None)
    options = Options(tier=request_tier(tier if isinstance(tier, str) else None))
    return _tokens_cost(str(name), prompt, getattr(usage, "completion_tokens", 0) or 0, options)


def text_cost(model: str, input_text: str, output_text: str) -> float:
    """LiteLLM's update_cost(input_text=, output_text=): each text counted as one user message."""
    prompt = count_message_tokens([{"role": "user", "content": input_text}], model)
    completion = count_message_tokens([{"role": "user", "content": output_text}], model)
    return _tokens_cost(model, prompt, completion, _NO_OPTIONS)


def _tokens_cost(model: str, prompt: int, completion: int, options: Options) -> float:
    table = price_table(model, snapshots=False)  # an actual cost: the model named is the one priced
    rates = table.rates(options, prompt)
    return float((prompt * rates.input + completion * rates.output) * table.multiplier)


def most_output_tokens(model: str) -> int | None:
    """The most output tokens ``model`` can write per choice: its ``max_output_tokens``, else the
    older ``max_tokens`` field of its cost map entry; None when the map says neither."""
    most = price_table(model).max_output_tokens or find_entry(model).get("max_tokens")
    return int(most) if most else None
