"""The worst prices litellm's cost calculation can apply to a call, read once per price entry.

litellm picks one price per token type from a model's entry by the prompt's size (keys
``*_above_<N>k_tokens`` and ``tiered_pricing`` ranges; a tier prices the whole prompt and the
output once the prompt passes its threshold), the request's ``service_tier`` (``*_priority``,
``*_flex``… keys, falling back to the standard key), caching (``cache_creation_*``), modalities
(audio, image, video token prices) and multipliers (regional endpoints, Anthropic's US-only
inference). A :class:`PriceTable` keeps, for each combination of those a request turns on, the
highest input and output price at each prompt size: one price per prompt token and one per
output token that no choice litellm makes can exceed. Tables are cached per entry and rebuilt
when the entry changes (``litellm.register_model``, or the dict edited in place).
"""

from __future__ import annotations

import bisect
import copy
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import litellm

from .errors import ConfigurationError, UnknownModelError, UnpricedModelError

# Request service tiers and the key suffix litellm prices them with.
_REQUEST_TIERS = {"priority": "priority", "fast": "priority", "flex": "flex", "balanced": "balanced"}
_REQUEST_TIERS["ultrafast"] = "ultrafast"
_STANDARD_TIERS = frozenset({"default", "standard"})
ANY_TIER = "*"  # "auto" or a tier we do not know: the provider picks, so every tier's price
_KEY_TIERS = ("ultrafast", "priority", "balanced", "flex", "batches", "decisions", "fast")
_THRESHOLD = re.compile(r"_above_(\d+(?:\.\d+)?)(k?)_tokens$")

# Per-token prices by base key: which side they price and what in the request turns them on.
_INPUT_BASES = {
    "input_cost_per_token": "text",
    "cache_read_input_token_cost": "text",
    "explicit_cache_read_input_token_cost": "text",
    "input_cost_per_token_cache_hit": "text",
    "cache_creation_input_token_cost": "caching",
    "cache_creation_input_token_cost_above_1hr": "caching",
    "cache_creation_input_token_cost_above_12hr": "caching",
    "input_cost_per_audio_token": "audio",
    "cache_read_input_audio_token_cost": "audio",
    "cache_creation_input_audio_token_cost": "audio",
    "input_cost_per_image_token": "image",
    "cache_read_input_image_token_cost": "image",
    "input_cost_per_video_token": "video",
}
_OUTPUT_BASES = {
    "output_cost_per_token": "text",
    "output_cost_per_reasoning_token": "text",  # any reasoning model may think unasked
    "output_cost_per_audio_token": "audio_out",
    "output_cost_per_image_token": "image_out",
    "output_cost_per_video_token": "video_out",
}
# Prices in units a token count cannot bound: a model charging them is refused, by field.
_UNBOUNDED_FIELDS = (
    "input_cost_per_second",
    "output_cost_per_second",
    "cost_per_second",
    "input_cost_per_character",
    "output_cost_per_character",
    "citation_cost_per_token",
    "input_cost_per_pixel",
    "output_cost_per_pixel",
    "output_cost_per_image",
)
# Per-call fees a request turns on, bounded from the request (see pricing.py).
_IMAGE_FEE = "input_cost_per_image"
_AUDIO_SECOND_FEE = "input_cost_per_audio_per_second"
_VIDEO_SECOND_FEE = "input_cost_per_video_per_second"
_REQUEST_FEES = ("input_cost_per_request", "input_cost_per_query")
_NUMERIC_FEES = (
    *_UNBOUNDED_FIELDS,
    *_REQUEST_FEES,
    _IMAGE_FEE,
    _AUDIO_SECOND_FEE,
    _VIDEO_SECOND_FEE,
    "google_maps_grounding_cost_per_query",
)


class Options(NamedTuple):
    """What a request turns on that changes its prices (a table caches rates per value)."""

    tier: str | None = None  # None: standard; a key suffix; or ANY_TIER
    caching: bool = False
    audio: bool = False
    image: bool = False
    video: bool = False
    audio_out: bool = False
    image_out: bool = False


def request_tier(value: object) -> str | None:
    """The price-key suffix of a request's ``service_tier`` (documented in the README)."""
    if value is None or value in _STANDARD_TIERS:
        return None
    if isinstance(value, str):
        return _REQUEST_TIERS.get(value.lower(), ANY_TIER)
    raise ConfigurationError(f"service_tier must be a string, got {value!r}")


class Rates(NamedTuple):
    input: float
    output: float


class PriceTable:
    """The worst per-token prices of one price entry, by options and prompt size."""

    def __init__(self, model: str, entry: Mapping[str, Any]) -> None:
        self.model = model
        _check_entry(model, entry)
        # (side, condition, base, threshold) -> {tier or None: price}
        self._prices: dict[tuple[str, str, str, float], dict[str | None, float]] = {}
        for key, value in entry.items():
            self._add(key, value, 0.0)
        for tier in entry.get("tiered_pricing") or ():
            start = float((tier.get("range") or (0.0,))[0])
            for key, value in tier.items():
                self._add(key, value, start)
        if not any(side == "input" and cond == "text" for side, cond, _, _ in self._prices):
            field = next((name for name in (*_UNBOUNDED_FIELDS, _IMAGE_FEE) if entry.get(name)), None)
            if field is None:
                raise UnknownModelError(model)
            raise UnpricedModelError(model, field)
        self.unbounded = next((name for name in _UNBOUNDED_FIELDS if entry.get(name)), None)
        if "model_router" in model and self.unbounded is None:
            # litellm adds the price of whichever model Azure's router picks to this flat price.
            self.unbounded = "the price of the model Azure's router picks"
        self.max_output_tokens = entry.get("max_output_tokens")
        search = entry.get("search_context_cost_per_query")  # by context size, or one fee (Perplexity)
        self.search_fee = float(max(search.values(), default=0.0) if isinstance(search, Mapping) else search or 0.0)
        self.maps_fee = float(entry.get("google_maps_grounding_cost_per_query") or 0.0)
        self.request_fee = sum(float(entry.get(name) or 0.0) for name in _REQUEST_FEES)
        self.image_fee = _max_of(entry, _IMAGE_FEE)
        self.audio_second_fee = _max_of(entry, _AUDIO_SECOND_FEE)
        self.video_second_fee = _max_of(entry, _VIDEO_SECOND_FEE)
        specific = entry.get("provider_specific_entry")
        specific = specific if isinstance(specific, Mapping) else {}
        geo = [float(v) for k, v in specific.items() if len(k) == 2]
        # Multipliers litellm applies by where a call was served: a Vertex regional endpoint or
        # Anthropic's inference geo are not known before the call, so always assumed; OpenAI's
        # data-residency (eu./us.) and FedRAMP (gov.) uplifts follow the request's api_base.
        uplift = [float(v) for k, v in entry.items() if k.endswith("uplift_multiplier") and _is_price(v)]
        vertex = [float(v) for k, v in entry.items() if k == "regional_endpoint_uplift_multiplier" and _is_price(v)]
        self.multiplier = max([1.0, *geo, *vertex])
        self.residency_multiplier = max([1.0, *uplift])
        self.fast_multiplier = float(specific.get("fast", 1.0))
        self._variants: dict[Options, tuple[list[float], list[Rates]]] = {}

    def include(self, model: str, entry: Mapping[str, Any]) -> None:
        """Raise this table to the prices of another entry litellm may price the call by: every
        per-token price, fee and multiplier becomes the higher of the two."""
        try:
            other = PriceTable(model, entry)
        except UnpricedModelError as exc:
            self.unbounded = self.unbounded or f"{exc.field} (of {model!r}, which may price its answers)"
            return
        except UnknownModelError:
            return  # no per-token price: litellm prices the answer by the requested model
        for key, by_tier in other._prices.items():
            mine = self._prices.setdefault(key, {})
            for tier, price in by_tier.items():
                mine[tier] = max(mine.get(tier, 0.0), price)
        for name, value in vars(other).items():
            mine_value = getattr(self, name)
            if isinstance(value, float) and isinstance(mine_value, float):  # fees and multipliers
                setattr(self, name, max(mine_value, value))
            elif name == "unbounded" and self.unbounded is None:
                self.unbounded = value
        self._variants.clear()

    def _add(self, key: str, value: object, start: float) -> None:
        parsed = _parse_price_key(key)
        if parsed is None or value is None:
            return
        base, tier, threshold = parsed
        if tier == "batches":
            return  # batch API prices: never a guarded call's
        side = "input" if base in _INPUT_BASES else "output"
        condition = _INPUT_BASES.get(base) or _OUTPUT_BASES[base]
        self._prices.setdefault((side, condition, base, max(threshold, start)), {})[tier] = float(value)  # type: ignore[arg-type]

    def rates(self, options: Options, prompt_tokens: float) -> Rates:
        """The highest input and output price per token litellm can apply at this prompt size."""
        variant = self._variants.get(options)
        if variant is None:
            variant = self._variants[options] = self._variant(options)
        thresholds, rates = variant
        return rates[bisect.bisect_right(thresholds, prompt_tokens) - 1]

    def _variant(self, options: Options) -> tuple[list[float], list[Rates]]:
        on = {"text", *(name for name in Options._fields[1:] if getattr(options, name))}
        thresholds = sorted({0.0, *(threshold for _, _, _, threshold in self._prices)})
        rates: list[Rates] = []
        best = {"input": 0.0, "output": 0.0}
        for threshold in thresholds:  # a tier at or below the prompt size may apply
            for (side, condition, _, at), by_tier in self._prices.items():
                if at == threshold and condition in on:
                    price = _tier_price(by_tier, options.tier)
                    if price is not None:
                        best[side] = max(best[side], price)
            rates.append(Rates(best["input"], best["output"]))
        return thresholds, rates


def _tier_price(by_tier: Mapping[str | None, float], tier: str | None) -> float | None:
    """The worst of what litellm may charge for a tier: its own key or the standard one (a
    cheaper tier is a discount litellm does not always apply: 1.95 charges Vertex's flex calls
    standard input prices); any tier: the worst of all."""
    if tier == ANY_TIER:
        return max(by_tier.values())
    if tier is not None and tier in by_tier:
        return max(by_tier[tier], by_tier.get(None, 0.0))
    return by_tier.get(None)


def _parse_price_key(key: str) -> tuple[str, str | None, float] | None:
    """``(base, tier, threshold)`` of a per-token price key, or None for other keys."""
    tier = None
    name = key
    for suffix in _KEY_TIERS:
        if name.endswith("_" + suffix):
            tier, name = suffix, name[: -len(suffix) - 1]
            break
    threshold = 0.0
    match = _THRESHOLD.search(name)
    if match:
        threshold = float(match.group(1)) * (1000 if match.group(2) else 1)
        name = name[: match.start()]
        if tier is None:
            for suffix in _KEY_TIERS:
                if name.endswith("_" + suffix):
                    tier, name = suffix, name[: -len(suffix) - 1]
                    break
    if name not in _INPUT_BASES and name not in _OUTPUT_BASES:
        return None
    return name, tier, threshold


def _max_of(entry: Mapping[str, Any], field: str) -> float:
    """A fee's highest value over its ``_above_…`` variants."""
    return max(
        (
            float(value)
            for key, value in entry.items()
            if (key == field or key.startswith(field + "_above_")) and _is_price(value)
        ),
        default=0.0,
    )


def _is_price(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_price_field(key: str) -> bool:
    return "cost" in key or key.endswith("multiplier")


def _check_entry(model: str, entry: Mapping[str, Any]) -> None:
    """Every price in the entry is a finite, non-negative number: else a ConfigurationError naming it."""
    for key, value in entry.items():
        if key == "tiered_pricing" and value is not None:
            _check_tiers(model, value)
        elif key == "provider_specific_entry" and isinstance(value, Mapping):
            for name, price in value.items():  # the ones read as multipliers (other keys are not prices)
                if len(name) == 2 or name == "fast":
                    check_price(model, f"{key} {name}", price)
        elif key in ("max_output_tokens", "max_input_tokens", "max_tokens") and value is not None:
            if not _is_price(value) or not 0 <= value < math.inf:
                raise ConfigurationError(
                    f"price of model {model!r}: {key} must be a non-negative number, got {value!r}"
                )
        elif _is_price_field(key) and isinstance(value, Mapping) and not _read_as_number(key):
            for name, price in value.items():  # prices by size or unit (search_context_cost_per_query)
                check_price(model, f"{key} {name}", price)
        elif _is_price_field(key):
            check_price(model, key, value)


def _check_tiers(model: str, tiers: object) -> None:
    if not isinstance(tiers, list):
        raise ConfigurationError(f"price of model {model!r}: tiered_pricing must be a list, got {tiers!r}")
    for tier in tiers:
        if not isinstance(tier, Mapping):
            raise ConfigurationError(f"price of model {model!r}: a tiered_pricing tier must be a mapping")
        bounds = tier.get("range")
        if bounds is not None and (
            not isinstance(bounds, list | tuple)
            or not bounds
            or not all(_is_price(bound) and bound >= 0 for bound in bounds)
            or not bounds[0] < math.inf
        ):
            raise ConfigurationError(
                f"price of model {model!r}: a tiered_pricing range must be [start, end] token counts, got {bounds!r}"
            )
        for name, price in tier.items():
            if _is_price_field(name):
                check_price(model, f"tiered_pricing {name}", price)


def _read_as_number(key: str) -> bool:
    """Whether the table reads this field as one number (a mapping there is unusable)."""
    return _parse_price_key(key) is not None or key.endswith("multiplier") or key.startswith(_NUMERIC_FEES)


def check_price(model: str, field: str, value: object, *, required: bool = False) -> None:
    """A finite non-negative number (or None, litellm's "not priced", unless ``required``)."""
    if value is None and not required:
        return
    if not _is_price(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise ConfigurationError(
            f"price of model {model!r}: {field} must be a finite non-negative number, got {value!r}"
        )


def find_entry(model: str) -> Mapping[str, Any]:
    """litellm's price entry for ``model`` (after ``litellm.model_alias_map``, as litellm's
    ``completion()`` resolves it), looked up as written or without its provider."""
    return _find(model)[1]


def _find(model: str) -> tuple[str, Mapping[str, Any]]:
    """The cost-map key and entry of ``model``."""
    table = litellm.model_cost
    model = resolved_model(model)
    entry = table.get(model)
    if entry is not None:
        return model, entry
    if "/" in model:
        for key in (model.split("/", 1)[1], model.rsplit("/", 1)[-1]):
            entry = table.get(key)
            if entry is not None:
                return key, entry
    raise UnknownModelError(model)


def resolved_model(model: str) -> str:
    """The model litellm calls for ``model``: its ``litellm.model_alias_map`` target (one step)."""
    aliases = litellm.model_alias_map
    return aliases.get(model, model) if aliases else model


# A dated or numbered snapshot of a model name: -2024-05-13, -20250929, @20241022, -0613, -002.
_SNAPSHOT = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|[-@]\d{8}|-\d{4}|[-@]\d{3})$")
_LATEST = "-latest"


class _Cached(NamedTuple):
    model: str  # the name litellm calls (after model_alias_map)
    key: str | None  # its cost-map key (None: priced by the call alone)
    entry: Mapping[str, Any]
    copy: dict[str, Any]
    cost_map_size: int
    snapshots: tuple[tuple[str, Mapping[str, Any]], ...]  # (key, entry) of each snapshot
    table: PriceTable


_TABLES: dict[object, _Cached] = {}
_SNAPSHOTS: dict[str, list[str]] = {}  # name -> its snapshots' keys, for one cost map
_SNAPSHOTS_OF: list[object] = [None, -1]  # the cost map (and its size) _SNAPSHOTS was read from


def price_table(model: str, *, snapshots: bool = True) -> PriceTable:
    """The model's table: the worst prices of its entry and of its snapshots' entries (litellm
    prices an answer by the model the provider names in it when that name is priced); with
    ``snapshots=False``, of its entry alone (to price an answer that names its model)."""
    cache_key = model if snapshots else (model,)
    cached = _TABLES.get(cache_key)
    if cached is not None and _fresh(cached, model):
        return cached.table
    key, entry = _find(model)
    found = tuple((name, litellm.model_cost[name]) for name in _snapshots(key, entry)) if snapshots else ()
    table = PriceTable(model, entry)
    for name, snapshot in found:
        table.include(name, snapshot)
    _remember(cache_key, _Cached(resolved_model(model), key, entry, {}, 0, found, table))
    return table


def call_price_table(model: str, request: Mapping[str, Any]) -> PriceTable:
    """The table for a request: ``price_table(model)``, or one with the call's own prices.

    litellm charges ``input_cost_per_token=`` / ``output_cost_per_token=`` given on the call (or
    a Router deployment's ``litellm_params``) in place of the entry's base price of that side;
    the entry's tier prices (a long prompt, a ``service_tier``) still apply, and the answer is
    priced as the requested model (no snapshot). A per-second price is not bounded by tokens.
    """
    if _CALL_PRICES.isdisjoint(request):
        return price_table(model)
    given = {name: request[name] for name in _CALL_PRICES if request.get(name) is not None}
    if not given:
        return price_table(model)
    for name, value in given.items():
        check_price(model, f"{name} (given on the call)", value)
        if name not in _TOKEN_PRICES:
            raise UnpricedModelError(model, name)
    cache_key = (model, given.get("input_cost_per_token"), given.get("output_cost_per_token"))
    cached = _TABLES.get(cache_key)
    if cached is not None and _fresh(cached, model):
        return cached.table
    try:
        key, entry = _find(model)
    except UnknownModelError:
        key, entry = None, _NO_ENTRY  # priced by the call alone
    table = PriceTable(model, {**entry, **given})
    _remember(cache_key, _Cached(resolved_model(model), key, entry, {}, 0, (), table))
    return table


_TOKEN_PRICES = ("input_cost_per_token", "output_cost_per_token")
_CALL_PRICES = frozenset({*_TOKEN_PRICES, "input_cost_per_second", "output_cost_per_second", "cost_per_second"})
_NO_ENTRY: Mapping[str, Any] = {}


def _fresh(cached: _Cached, model: str) -> bool:
    """Whether a cached table still holds: no entry added to the cost map (a new snapshot, or a
    closer name), its entry the same object and unedited, the same alias target, and no snapshot
    replaced since. (A snapshot's entry edited in place is seen at the next registration.)"""
    cost = litellm.model_cost
    if len(cost) != cached.cost_map_size:
        return False
    entry = cost.get(cached.key) if cached.key is not None else _NO_ENTRY
    if entry is not cached.entry or entry != cached.copy:
        return False
    aliases = litellm.model_alias_map
    if (aliases.get(model, model) if aliases else model) != cached.model:
        return False
    return all(cost.get(name) is snapshot for name, snapshot in cached.snapshots)


def _remember(key: object, cached: _Cached) -> None:
    if len(_TABLES) > 4096:
        _TABLES.clear()
    size = len(litellm.model_cost)
    _TABLES[key] = cached._replace(copy=copy.deepcopy(dict(cached.entry)), cost_map_size=size)


def _snapshots(key: str, entry: Mapping[str, Any]) -> list[str]:
    """Cost-map keys of the snapshots of ``key`` (``key`` + a date or version suffix; for a
    ``-latest`` name, those of the name without it) priced for the same provider."""
    cost = litellm.model_cost
    if _SNAPSHOTS_OF[0] is not cost or _SNAPSHOTS_OF[1] != len(cost):
        _SNAPSHOTS.clear()
        for name in cost:
            match = _SNAPSHOT.search(name)
            if match:
                _SNAPSHOTS.setdefault(name[: match.start()], []).append(name)
        _SNAPSHOTS_OF[:] = [cost, len(cost)]
    stem = key.removesuffix(_LATEST)
    provider = entry.get("litellm_provider")
    return [
        name
        for name in _SNAPSHOTS.get(stem, ())
        if name != key and isinstance(cost[name], Mapping) and cost[name].get("litellm_provider") == provider
    ]


class Parts:
    """What a prompt holds besides text, noted while its tokens are counted (one walk)."""

    __slots__ = ("audio_bytes", "caching", "files", "images", "maps", "searches")

    def __init__(self) -> None:
        self.searches = 0  # web searches and map groundings its tools can make
        self.maps = 0
        self.images = 0
        self.audio_bytes = 0
        self.files = 0
        self.caching = False
