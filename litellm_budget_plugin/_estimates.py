"""What BudgetGuard holds a call for and what it cost: its worst case, the output limit
``cap_output`` sets, why a refusal's estimate was that large, the cost charged.

Kept apart from the guard's admission and charging (guard.py): these read only the request and
the guard's output options, never a store.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

import litellm

from . import ledger, pricing
from ._price_table import resolved_model
from .errors import BudgetExceededError, BudgetPluginError, ConfigurationError
from .ledger import Usage
from .subjects import kind_of

logger = logging.getLogger(__name__)


class OutputOptions(Protocol):
    """A guard's options on output tokens (see :class:`~.guard.BudgetGuard`)."""

    cap_output: bool
    min_output_tokens: int
    output_token_cap: int | None


def worst_case(
    call_type: str,
    model: str,
    request: Mapping[str, Any],
    limits: list[pricing.OutputLimit],
    capped: bool,
    output_token_cap: int | None,
) -> pricing.WorstCase:
    """The call's worst case. A call without an output limit (``limits``) is held for its
    model's maximum (an upper bound), or ``output_token_cap`` when set (an assumption),
    except a capped call: the guard then sets the limit, so the model's maximum is a bound."""
    cap = output_token_cap
    if call_type not in pricing.OUTPUT_CALLS:
        pass  # no output tokens: the cap is not read
    elif limits:
        if cap is None:  # read only if the request's limit is not: its largest is the bound
            cap = max(value for _, _, value in limits)
    elif cap is None or capped:
        cap = pricing.most_output_tokens(model)
    return pricing.worst_case(call_type, model, request, cap or pricing.DEFAULT_OUTPUT_TOKEN_CAP)


def check_cappable(kwargs: Mapping[str, Any], limits: list[pricing.OutputLimit]) -> None:
    """Refuse a capped call whose output limit was given by position: litellm passes it on
    positionally, so lowering it in the keywords would not reach the request."""
    for section, key, _ in limits:
        if section is None and key not in kwargs:
            raise ConfigurationError(f"cap_output cannot lower {key} given by position: pass it as {key}=")


def explained(
    refusal: BudgetExceededError,
    call_type: str,
    model: str,
    request: Mapping[str, Any],
    limits: list[pricing.OutputLimit],
    worst: pricing.WorstCase,
    options: OutputOptions,
) -> BudgetExceededError:
    """The refusal, saying so when most of the estimate is output tokens the caller never asked
    for, or when output was capped and not even ``min_output_tokens`` fit. It keeps the budget
    (``subject``) and the window that refused."""
    if call_type not in pricing.OUTPUT_CALLS:
        return refusal
    if options.cap_output:
        hint = (
            f"not even min_output_tokens={options.min_output_tokens} output tokens fit after the prompt "
            f"(${worst.prompt_cost:.6f}) with cap_output=True"
        )
    elif limits or worst.output_cost <= worst.total / 2:
        return refusal
    else:
        choices = request.get("n") or 1
        per_choice = f" for each of {choices} choices" if choices > 1 else ""
        bound = options.output_token_cap is None and pricing.most_output_tokens(model) is not None
        tokens = f"output tokens, the most {model} can write" if bound else "assumed output tokens"
        hint = (
            f"of which ${worst.output_cost:.6f} is {worst.output_tokens:,} {tokens}{per_choice} "
            "(no max_tokens given): pass max_tokens= to hold less, or cap_output=True"
        )
    return BudgetExceededError(
        refusal.subject,
        refusal.spend,
        refusal.budget,
        refusal.estimate,
        refusal.reserved,
        hint=hint,
        window=refusal.window,
    )


def limit_output(kwargs: MutableMapping[str, Any], limits: list[pricing.OutputLimit], tokens: int) -> None:
    """Lower every output limit of the request (``limits``, from :func:`pricing.output_limits`) above
    ``tokens`` to it, in ``kwargs``; with none, set ``max_tokens``, which litellm maps to each
    provider's own (``max_completion_tokens`` for OpenAI's reasoning models). ``extra_body`` is
    replaced by a copy: the caller's dict may be reused for its next call."""
    for section, key, value in limits:
        if value <= tokens:
            continue
        if section is None:
            kwargs[key] = tokens
        else:
            kwargs[section] = {**kwargs[section], key: tokens}
    if not limits:
        kwargs["max_tokens"] = tokens


def actual_cost(call_id: object, reported: object, response_obj: Any, model: str, held: float) -> float:
    """What a finished call is charged: the cost litellm reported, else its response priced, else
    (neither known) what was held for it."""
    if isinstance(reported, int | float) and not isinstance(reported, bool) and 0 <= reported < math.inf:
        return float(reported)
    try:
        return pricing.response_cost(response_obj, model)
    except BudgetPluginError:
        logger.warning("no cost for call %s of %s; charging its hold", call_id, model)
        return held


def call_usage(response_obj: Any, keys: tuple[str, ...]) -> Usage:
    """A finished call's tokens, as its response reports them (0 if it does not), and its tags
    among ``keys`` (the budgets it was held in), for its ledger entry."""
    usage = getattr(response_obj, "usage", None)
    if isinstance(usage, Mapping):
        counts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    else:
        counts = [getattr(usage, "prompt_tokens", 0), getattr(usage, "completion_tokens", 0)]
    tokens = [
        n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= ledger.MAX_TOKENS else 0 for n in counts
    ]
    return Usage(tokens[0], tokens[1], tuple(key for key in keys if kind_of(key) == "tag"))


def charged_model(model: str, request: Mapping[str, Any]) -> str:
    """The name a call of ``model`` is charged under: litellm's, after ``litellm.model_alias_map``
    and without its provider (``openai/gpt-4o`` is ``gpt-4o``), as its success event names it. A
    per-model cap counts a call's hold and its charge by this name."""
    provider = request.get("custom_llm_provider")
    return _without_provider(resolved_model(model), provider if isinstance(provider, str) else None)


@functools.lru_cache(maxsize=256)
def _without_provider(model: str, provider: str | None) -> str:
    try:
        return str(litellm.get_llm_provider(model, custom_llm_provider=provider)[0])
    except Exception:  # litellm cannot route it (the call will fail): its hold keeps the name given
        return model
