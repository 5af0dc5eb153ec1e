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
from typing import Any, NamedTuple, cast

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
    args: tuple[Any, ...] = (),
    output_token_cap: int = DEFAULT_OUTPUT_TOKEN_CAP,
) -> WorstCase:
    """The worst case of a litellm call of ``call_type`` with keyword arguments ``request``
    (and positional ``args``, as litellm received them); other call types cost nothing up front."""
    if call_type in _CHAT_CALLS:
        messages = request.get("messages") or (args[1] if len(args) > 1 else [])
        return _worst_case(model, request, output_token_cap, messages=messages)
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
    entry = prices(model)
    prompt_tokens = count_message_tokens(messages, model) if messages is not None else _content_tokens(prompt, model)
    prompt_cost = prompt_tokens * float(entry.get("input_cost_per_token") or 0.0)
    if output_token_cap is None:
        return WorstCase(prompt_cost if math.isfinite(prompt_cost) else math.inf, 0.0, 0)
    output_tokens = output_token_limit(request, model, output_token_cap)
    output_price = max(request.get("n") or 1, 1) * float(entry.get("output_cost_per_token") or 0.0)
    return WorstCase(prompt_cost if math.isfinite(prompt_cost) else math.inf, output_price, output_tokens)


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


def max_output_tokens(model: str) -> int | None:
    """The most output tokens ``model`` can produce per choice, as litellm's cost map says (None: unknown)."""
    value = prices(model).get("max_output_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
