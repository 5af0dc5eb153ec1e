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
from typing import Any, cast

import litellm
import litellm.litellm_core_utils.default_encoding
import tiktoken

from .errors import ConfigurationError, UnknownModelError

# litellm's chat counting: 3 tokens of priming per request, 3 per message, 1 per name.
_TOKENS_PER_REQUEST = 3
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
# An image part is counted as a high-detail 2048x2048 image (OpenAI's 765-token tiling
# upper bound for the usual downscale), so an estimate stays an upper bound.
_TOKENS_PER_IMAGE = 765
# When a request names no output limit, hold the model's maximum capped at this many
# tokens, as LiteLLM's proxy does for its token reservations.
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


def _content_tokens(content: object, model: str) -> int:
    """Tokens of a message value: a string, a list of parts (multimodal), or nested data."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content, model)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image"):
                total += _TOKENS_PER_IMAGE
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += count_text_tokens(part["text"], model)
            else:
                total += _content_tokens(part, model)
        return total
    # tool calls, function calls, and anything else structured: count its JSON text
    return count_text_tokens(json.dumps(content, default=str, separators=(",", ":")), model)


def count_message_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    encoding = encoding_for(model).name
    total = _TOKENS_PER_REQUEST
    for message in messages:
        if not isinstance(message, Mapping):
            raise ConfigurationError(f"each message must be a mapping, got {type(message).__name__}")
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str) and len(value) <= _CACHED_TEXT_LENGTH:  # most values: one cache lookup
                total += _count_cached(value, encoding)
            else:
                total += _content_tokens(value, model)
            if key == "name":
                total += _TOKENS_PER_NAME
    return total


def prices(model: str) -> Mapping[str, Any]:
    """litellm's price entry for ``model``, looked up as written or without its provider."""
    table = litellm.model_cost
    entry = table.get(model)
    if entry is None and "/" in model:
        entry = table.get(model.split("/", 1)[1])
    if entry is None:
        entry = table.get(model.rsplit("/", 1)[-1])
    if entry is None or "input_cost_per_token" not in entry:
        raise UnknownModelError(model)
    return cast(Mapping[str, Any], entry)


def register_price(
    model: str,
    input_cost_per_token: float,
    output_cost_per_token: float,
    max_output_tokens: int | None = None,
) -> None:
    """Give a model a price (both here and in litellm, so actual costs agree with estimates)."""
    from .budget import check_amount

    entry: dict[str, Any] = {
        "input_cost_per_token": check_amount("input_cost_per_token", input_cost_per_token),
        "output_cost_per_token": check_amount("output_cost_per_token", output_cost_per_token),
        "litellm_provider": "openai",
        "mode": "chat",
    }
    if max_output_tokens is not None:
        entry["max_output_tokens"] = int(max_output_tokens)
    litellm.register_model({model: entry})


def output_token_limit(request: Mapping[str, Any], model: str, cap: int = DEFAULT_OUTPUT_TOKEN_CAP) -> int:
    """The most output tokens the request can produce per choice."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{key} must be a non-negative integer, got {value!r}")
            return value
    model_max = prices(model).get("max_output_tokens") or cap
    return min(int(model_max), cap)


def estimate_cost(
    model: str,
    *,
    messages: Iterable[Mapping[str, Any]] | None = None,
    prompt: object = None,
    output_tokens: int = 0,
    n: int = 1,
) -> float:
    """Worst-case cost of a call: its prompt at the input price plus ``n`` x output tokens."""
    entry = prices(model)
    prompt_tokens = count_message_tokens(messages, model) if messages is not None else _content_tokens(prompt, model)
    cost = prompt_tokens * float(entry.get("input_cost_per_token") or 0.0) + _output_cost(entry, output_tokens, n)
    return cost if math.isfinite(cost) else math.inf


def output_cost(model: str, output_tokens: int, n: int = 1) -> float:
    """The part of :func:`estimate_cost` that pays for output: the rest is the prompt.

    Worked out only to explain a refusal, so the estimate itself stays one lookup.
    """
    cost = _output_cost(prices(model), output_tokens, n)
    return cost if math.isfinite(cost) else math.inf


def _output_cost(entry: Mapping[str, Any], output_tokens: int, n: int) -> float:
    return output_tokens * max(n, 1) * float(entry.get("output_cost_per_token") or 0.0)


def response_cost(response: Any, model: str | None = None) -> float:
    """The actual cost of a response: litellm's own figure, else its usage at our prices."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if isinstance(cost, int | float) and math.isfinite(cost) and cost >= 0:
        return float(cost)
    usage = getattr(response, "usage", None)
    name = model or getattr(response, "model", None)
    if usage is None or not name:
        raise ConfigurationError("response carries neither a cost nor usage and a model")
    entry = prices(str(name))
    return float(
        (getattr(usage, "prompt_tokens", 0) or 0) * float(entry.get("input_cost_per_token") or 0.0)
        + (getattr(usage, "completion_tokens", 0) or 0) * float(entry.get("output_cost_per_token") or 0.0)
    )


def text_cost(model: str, input_text: str, output_text: str) -> float:
    """LiteLLM's update_cost(input_text=, output_text=): each text counted as one user message."""
    entry = prices(model)
    prompt = count_message_tokens([{"role": "user", "content": input_text}], model)
    completion = count_message_tokens([{"role": "user", "content": output_text}], model)
    return prompt * float(entry.get("input_cost_per_token") or 0.0) + completion * float(
        entry.get("output_cost_per_token") or 0.0
    )
