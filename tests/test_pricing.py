"""Worst cases against litellm's own cost calculation, over the whole bundled cost map.

For every model litellm prices per token (chat, completion, responses, embedding, or no mode),
prompt sizes from small to its ``max_input_tokens`` (each tier threshold and one token either
side), the output at the assumed limit and each option a request can turn on, our worst case
must be at least what ``litellm.cost_per_token`` charges for the same tokens. Models we refuse
as unbounded must refuse, and are counted apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import litellm
import pytest
from litellm.types.utils import CompletionTokensDetailsWrapper, PromptTokensDetailsWrapper, Usage

from litellm_budget_plugin import ConfigurationError, UnknownModelError, UnpricedModelError
from litellm_budget_plugin._price_table import PriceTable
from litellm_budget_plugin.pricing import Parts, priced_worst_case

_MODES = {"chat", "completion", "responses", "embedding", None}
_THRESHOLD = re.compile(r"_above_(\d+(?:\.\d+)?)(k?)_tokens")
_OUTPUT_TOKENS = 4096
_AUDIO_BYTES = 2_000_000  # an input_audio part this big: its token bound covers the prompt's tokens


class Case(NamedTuple):
    name: str
    request: dict[str, Any]
    parts: Parts
    usage: Usage
    service_tier: str | None


def _thresholds(entry: Mapping[str, Any]) -> set[int]:
    found = set()
    for key in entry:
        match = _THRESHOLD.search(key)
        if match:
            found.add(int(float(match.group(1)) * (1000 if match.group(2) else 1)))
    for tier in entry.get("tiered_pricing") or ():
        for bound in tier.get("range") or ():
            found.add(int(bound))
    return found


def _prompt_sizes(entry: Mapping[str, Any]) -> list[int]:
    top = entry.get("max_input_tokens") or entry.get("max_tokens") or 1_000_000
    sizes = {1, 1000, int(top)}
    for threshold in _thresholds(entry):
        sizes |= {threshold - 1, threshold, threshold + 1}
    return sorted(size for size in sizes if 0 < size <= max(int(top), 1))


def _parts(**fields: Any) -> Parts:
    parts = Parts()
    for name, value in fields.items():
        setattr(parts, name, value)
    return parts


def _cases(entry: Mapping[str, Any], prompt: int, output: int) -> Iterator[Case]:
    plain = Usage(prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output)
    yield Case("plain", {}, Parts(), plain, None)
    for tier in ("priority", "flex"):
        yield Case(tier, {"service_tier": tier}, Parts(), plain, tier)
    cached = Usage(
        prompt_tokens=prompt,
        completion_tokens=output,
        total_tokens=prompt + output,
        cache_creation_input_tokens=prompt,
        prompt_tokens_details=PromptTokensDetailsWrapper(cache_creation_tokens=prompt),
    )
    yield Case("caching", {}, _parts(caching=True), cached, None)
    yield Case("web search", {"web_search_options": {}}, Parts(), plain, None)
    if output:
        reasoning = Usage(
            prompt_tokens=prompt,
            completion_tokens=output,
            total_tokens=prompt + output,
            completion_tokens_details=CompletionTokensDetailsWrapper(reasoning_tokens=output),
        )
        yield Case("reasoning", {}, Parts(), reasoning, None)
    if any("audio" in key for key in entry):
        audio = Usage(
            prompt_tokens=prompt,
            completion_tokens=output,
            total_tokens=prompt + output,
            prompt_tokens_details=PromptTokensDetailsWrapper(audio_tokens=prompt),
            completion_tokens_details=CompletionTokensDetailsWrapper(audio_tokens=output) if output else None,
        )
        request = {"modalities": ["text", "audio"]}
        yield Case("audio", request, _parts(audio_bytes=_AUDIO_BYTES), audio, None)


def _priced_models() -> list[str]:
    return sorted(
        name
        for name, entry in litellm.model_cost.items()
        if isinstance(entry, Mapping) and entry.get("mode") in _MODES and name != "sample_spec"
    )


def _litellm_key(name: str, provider: object) -> object:
    try:
        return litellm.get_model_info(name, custom_llm_provider=provider if isinstance(provider, str) else None).get("key")
    except Exception:  # noqa: BLE001 - litellm cannot find it: it cannot price it either
        return None


def _version() -> str:
    from importlib.metadata import version

    return version("litellm")


def test_worst_case_covers_litellms_cost_for_every_priced_model() -> None:
    checked = refused = compared = aliased = 0
    under: list[str] = []
    for name in _priced_models():
        entry = litellm.model_cost[name]
        try:
            table = PriceTable(name, entry)
        except UnpricedModelError:
            refused += 1
            continue
        except UnknownModelError:
            continue  # no price at all: nothing to compare
        embedding = entry.get("mode") == "embedding"
        output = 0 if embedding else min(int(entry.get("max_output_tokens") or _OUTPUT_TOKENS), _OUTPUT_TOKENS)
        if table.unbounded is not None:
            with pytest.raises(UnpricedModelError):
                priced_worst_case(table, {}, 1000, Parts(), None if embedding else output)
            refused += 1
            continue
        provider = entry.get("litellm_provider")
        if _litellm_key(name, provider) != name:
            aliased += 1  # litellm prices this name with another entry: compared under that one
            continue
        checked += 1
        for prompt in _prompt_sizes(entry):
            for case in _cases(entry, prompt, output):
                request = {**case.request, "max_tokens": output}
                worst = priced_worst_case(table, request, prompt, case.parts, None if embedding else output).total
                try:
                    actual = sum(
                        litellm.cost_per_token(
                            model=name,
                            custom_llm_provider=provider,
                            prompt_tokens=prompt,
                            completion_tokens=output,
                            usage_object=case.usage,
                            service_tier=case.service_tier,
                            call_type="embedding" if embedding else "completion",
                        )
                    )
                except Exception:  # noqa: BLE001 - litellm cannot price it this way: nothing to compare
                    continue
                compared += 1
                if not worst >= actual * (1 - 1e-9):
                    under.append(f"{name} {case.name} prompt={prompt}: {worst!r} < {actual!r}")
    print(
        f"\ncost-map sweep, litellm {_version()}: {checked} models checked, {compared} comparisons, "
        f"{len(under)} underestimates, {refused} refused as unbounded, {aliased} priced by litellm under another name"
    )
    assert checked > 1000
    assert not under, "\n".join(under[:40])
