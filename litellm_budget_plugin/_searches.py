"""Web-search and map-grounding fees a call can be billed, read from its request and price entry.

litellm bills a search whenever the answer reports one (``StandardBuiltInToolCostTracking``,
the Perplexity and Gemini cost calculators), so a model that searches unasked is held a search
on every call, and a model billed per query that the model chooses cannot be bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._price_table import Parts, PriceTable, find_entry
from .errors import UnpricedModelError

_SEARCH_TOOL_KEYS = ("googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval")
_MAPS_TOOL_KEYS = ("googleMaps", "google_maps")


def tool_searches(tools: object, parts: Parts) -> tuple[int, int]:
    """Web searches and map groundings a call's tools can make (a tool's ``max_uses``, else 1),
    noting cache_control on tools."""
    searches = maps = 0
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, Mapping):
            continue
        if tool.get("cache_control") is not None:
            parts.caching = True
        kind = str(tool.get("type") or "")
        uses = tool.get("max_uses")
        count = uses if isinstance(uses, int) and not isinstance(uses, bool) and uses > 0 else 1
        if "web_search" in kind or any(key in tool for key in _SEARCH_TOOL_KEYS):
            searches += count
        if any(key in tool for key in _MAPS_TOOL_KEYS):
            maps += count
    return searches, maps


# How litellm bills a model's searches, read from its price entry (see _search_rule).
_SEARCHES_UNASKED = "searches unasked"
_PER_QUERY = "per query"
_SELF_SEARCHING_NAMES = ("sonar", "search", "perplexity")
_SEARCH_RULES: dict[int, tuple[PriceTable, str | None]] = {}


def searches_unasked(table: PriceTable) -> bool:
    """Whether litellm can bill the model a search the request did not ask for."""
    return _search_rule(table) == _SEARCHES_UNASKED


def _search_rule(table: PriceTable) -> str | None:
    """``_SEARCHES_UNASKED`` for a model that searches by itself (Perplexity's Sonar, OpenAI's
    search models: litellm bills a search whenever the answer reports one), ``_PER_QUERY`` for a
    model billed per grounding query (Gemini 3), else None. Cached per table."""
    cached = _SEARCH_RULES.get(id(table))
    if cached is not None and cached[0] is table:
        return cached[1]
    entry = find_entry(table.model)
    name = table.model.lower()
    rule = None
    if entry.get("web_search_billing_unit") == "per_query":
        rule = _PER_QUERY
    elif entry.get("litellm_provider") == "perplexity" or any(word in name for word in _SELF_SEARCHING_NAMES):
        rule = _SEARCHES_UNASKED
    if len(_SEARCH_RULES) > 4096:
        _SEARCH_RULES.clear()
    _SEARCH_RULES[id(table)] = (table, rule)
    return rule


def search_fees(table: PriceTable, request: Mapping[str, Any], parts: Parts) -> float:
    """Search and map-grounding fees: one search per tool (its ``max_uses``) or for
    ``web_search_options``, and one for a model that searches unasked. A model billed per query
    the model chooses is refused: nothing in the request bounds their number."""
    rule = _search_rule(table)
    searches = parts.searches
    if searches or request.get("web_search_options") is not None:
        if rule == _PER_QUERY:
            raise UnpricedModelError(table.model, "Google Search grounding queries (the model chooses how many)")
        searches = max(searches, 1)
    elif rule == _SEARCHES_UNASKED:
        searches = 1
    return searches * table.search_fee + parts.maps * table.maps_fee
