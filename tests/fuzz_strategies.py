"""Hypothesis strategies for hostile values, and the tally of what the fuzz suite tried.

Each strategy mixes values that are valid (so that some operations succeed and the "every
other user unchanged" half of the property is exercised) with values at and past the edges
of :mod:`litellm_budget_plugin.limits`: subnormal and endless numbers, texts of many digits,
lone surrogates, NUL, texts just over 1 KiB, nesting past 32 levels, types no JSON holds.
"""

from __future__ import annotations

import collections
import json
import math
import os
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# --- profiles: short in CI, long with FUZZ_EXAMPLES ---------------------------------------

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)
settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES or 25,
    deadline=None,  # the machine is shared: time per example says nothing here
    database=None,  # nothing written into the repository
    derandomize=not EXAMPLES,  # the CI run tries the same inputs every time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FUZZ = settings.get_profile("fuzz")


def examples(default: int) -> settings:
    """``default`` examples in CI, ``FUZZ_EXAMPLES`` when that is set."""
    return settings(FUZZ, max_examples=EXAMPLES or default)


# --- the tally ----------------------------------------------------------------------------

# (target, outcome class) -> inputs tried; written out by test_fuzz's module fixture.
TALLY: collections.Counter[tuple[str, str]] = collections.Counter()


def tally(target: str, outcome: str) -> None:
    TALLY[(target, outcome)] += 1


def tally_input(target: str, drawn: object) -> None:
    """Count an input as all valid or as holding a hostile value (Arguments tell which;
    other inputs count as hostile)."""
    valid = isinstance(drawn, Arguments) and not drawn.hostile
    TALLY[(target, "(input all valid)" if valid else "(input with a hostile value)")] += 1


# --- scalars --------------------------------------------------------------------------------

SUBNORMALS = [5e-324, 1e-320, 2.2e-308, -5e-324]
ENDLESS = [math.inf, -math.inf, math.nan, -math.nan]
HUGE_INTS = [10**400, -(10**400), 2**63, 2**1024, 10**15, 10**15 + 1]
ODD_OBJECTS: list[object] = [
    None,
    True,
    False,
    Decimal("1"),
    Decimal("NaN"),
    Fraction(1, 3),
    1j,
    b"1",
    bytearray(b"1"),
    [],
    [1],
    {},
    {"a": 1},
    (1,),
    object(),
    {1, 2},
]

any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
odd = st.sampled_from(ODD_OBJECTS)
# Hostile text: lone surrogates, NUL, controls, right-to-left marks, empty, just over 1 KiB.
hostile_text = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\t\n",
            "\x00",
            "a\x00b",
            "\ud800",
            "a\udfffb",
            "\u202e",
            "\ufeff",
            "x" * 1024,
            "x" * 1025,
            "é" * 512,
            "é" * 513,
            "\U0001f600" * 257,
            "x" * 70_000,
        ]
    ),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), min_size=1, max_size=8),
)
anything = st.one_of(odd, any_float, st.integers(), st.sampled_from(HUGE_INTS + SUBNORMALS + ENDLESS), hostile_text)
# Keys of a dict: hostile, but hashable.
keys = st.one_of(
    hostile_text, st.integers(), st.sampled_from([None, True, 1.5, math.nan, Decimal("1"), (1,), b"k", 1j])
)


def _digits(unit: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "9" * 400 + unit,
            "0." + "0" * 300 + "1" + unit,
            "1" * 1100 + unit,
            "1e5" + unit,
            "-1" + unit,
            "0" + unit,
            "1." + unit,
            ".5" + unit,
            "nan" + unit,
            "inf" + unit,
            "\u0661" + unit,  # ARABIC-INDIC DIGIT ONE: \d matches it
            "\U0001d7d7" + unit,  # MATHEMATICAL BOLD DIGIT NINE
            "\uff11" + unit,  # FULLWIDTH DIGIT ONE
            f" 1 {unit} ",
            "1" + unit.upper(),
        ]
    )


# --- domain values: a valid one now and then, hostile ones mostly ---------------------------

GOOD_DURATIONS: list[object] = [None, "daily", "weekly", "monthly", "yearly", "1h", "30s", "100y", "1mo", 1, 0.5, 36500]
EDGE_DURATIONS: list[object] = [
    1 / 86400,
    1 / 86400 * (1 - 1e-6),
    36500.000001,
    36501,
    "36500d",
    "36501d",
    "101y",
    "1s",
    "0.9s",
    "0s",
    -0.0,
    "",
    "fortnightly",
    "Daily",
    "1 fortnight",
    "x" * 2000,
]
durations = st.one_of(
    st.sampled_from(GOOD_DURATIONS + EDGE_DURATIONS),
    st.sampled_from(["s", "m", "h", "d", "w", "mo", "y"]).flatmap(_digits),
    any_float,
    st.integers(min_value=-(10**30), max_value=10**30),
    anything,
)

GOOD_AMOUNTS: list[object] = [0, 0.0, 0.01, 0.5, 1, 2.5, 100.0, 1e15, 1e-9]
amounts = st.one_of(
    st.sampled_from(GOOD_AMOUNTS),
    st.floats(min_value=0, max_value=1e3),
    st.sampled_from([1e15 + 1, 1e16, -0.0, -1e-300, 10**15 + 1, "1", "0.5", " 1 ", "1e400"]),
    any_float,
    anything,
)
ttls = st.one_of(st.sampled_from([60, 1.5, 31_536_000, 31_536_001, 0, -1, 1e-300]), amounts)
modes = st.one_of(st.sampled_from(["strict", "soft", "STRICT", "lenient", ""]), anything)
timestamps = st.one_of(
    st.sampled_from([0, 1_700_000_000.0, 32_503_680_000.0, 32_503_680_001.0, -1, 1e300, 253402300800.0]),
    amounts,
)

SEEDED_USERS = ["alice", "bob", "carol"]
user_ids = st.one_of(st.sampled_from([*SEEDED_USERS, "dave", "x" * 1024, "\u00e9\u00e8"]), hostile_text)
users = st.one_of(user_ids, anything)
call_id_keys = st.one_of(st.sampled_from(["held-b1", "held-b2", "fresh-1", "seed-a"]), keys)
call_ids = st.one_of(call_id_keys, anything)
model_keys = st.one_of(st.sampled_from(["gpt-4o", "m"]), keys)
models = st.one_of(model_keys, anything)


def nested(depth: int, leaf: object = 1) -> object:
    """``depth`` levels of lists and dicts around ``leaf``, built without recursion."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), any_float, hostile_text)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)),
    max_leaves=20,
)
extra_values = st.one_of(
    json_values,
    st.sampled_from([nested(31), nested(32), nested(33), nested(40), nested(1000), "x" * 70_000, ["y" * 1000] * 70]),
    st.builds(nested, st.integers(0, 60), any_float),
    odd,
)

RECORD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "total_budget": st.one_of(st.none(), amounts),
    "current_cost": amounts,
    "model_cost": st.one_of(
        st.dictionaries(model_keys, amounts, max_size=3),
        st.sampled_from([0, [], "x", None, {"m" * 2000: 1}]),
    ),
    "duration": durations,
    "created_at": timestamps,
    "last_updated_at": timestamps,
    "reservations": st.one_of(
        st.dictionaries(
            call_id_keys,
            st.one_of(st.fixed_dictionaries({"amount": amounts, "expires_at": timestamps}), anything),
            max_size=2,
        ),
        anything,
    ),
    "applied": st.one_of(st.dictionaries(call_id_keys, timestamps, max_size=2), anything),
    "overruns": st.one_of(st.integers(-5, 5), anything),
    "overrun_cost": amounts,
}
# A record: some of its own fields (each valid or not) and some extra fields.
records = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            **RECORD_FIELDS,
            "note": extra_values,
            "metadata": extra_values,
            "\ud800": st.just(1),
        },
    ),
    anything,
)
field_dicts = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            **{name: RECORD_FIELDS[name] for name in RECORD_FIELDS if name not in ("reservations", "applied")},
            "reservations": st.just({}),
            "nonsense": st.just(1),
        },
    ),
    anything,
)
defaults = st.one_of(
    st.none(),
    st.fixed_dictionaries({"total_budget": st.one_of(st.none(), amounts), "duration": durations}),
    anything,
)


def jsonable(value: object) -> bool:
    """Whether the standard ``json`` module can write ``value`` (an HTTP client can send it)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return False
    return True


# --- arguments: valid ones with at most two hostile ones among them ----------------------

T0 = 1_800_000_000.0  # the fuzz suite's "now"
small_amounts = st.one_of(st.floats(0, 3), st.sampled_from([0, 1, 2]))
good_records = st.fixed_dictionaries(
    {"total_budget": st.one_of(st.none(), st.floats(0, 100), st.integers(0, 100))},
    optional={
        "duration": st.sampled_from(["daily", 7, "1h"]),
        "current_cost": small_amounts,
        "model_cost": st.dictionaries(st.sampled_from(["m", "gpt-4o"]), small_amounts, max_size=2),
        "created_at": st.floats(T0 - 1e6, T0),
        "reservations": st.just({"fresh-1": {"amount": 0.5, "expires_at": T0 + 60}}),
        "note": st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=5)), st.lists, max_leaves=5),
    },
)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "user": st.sampled_from([*SEEDED_USERS, "dave"]),
    "maybe_user": st.one_of(st.none(), st.sampled_from([*SEEDED_USERS, "dave"])),
    "budget": st.one_of(st.none(), st.floats(0, 20), st.integers(0, 20)),
    "duration": st.sampled_from(GOOD_DURATIONS),
    "created_at": st.one_of(st.none(), st.floats(T0 - 1e6, T0)),
    "amount": small_amounts,
    "maybe_amount": st.one_of(st.none(), small_amounts),
    "model": st.sampled_from(["gpt-4o", "m", "\u00e9-model"]),
    "call_id": st.sampled_from(["held-b1", "held-b2", "fresh-1", "seed-a"]),
    "maybe_call_id": st.one_of(st.none(), st.sampled_from(["held-b1", "fresh-1", "seed-a"])),
    "ttl": st.sampled_from([1, 60, 3600.5]),
    "mode": st.sampled_from(["strict", "soft"]),
    "default": st.sampled_from(
        [None, {"total_budget": 5.0, "duration": None}, {"total_budget": None, "duration": "daily"}]
    ),
    "record": good_records,
    "fields": st.fixed_dictionaries(
        {},
        optional={
            "total_budget": st.one_of(st.none(), st.floats(0, 20)),
            "current_cost": small_amounts,
            "duration": st.sampled_from(GOOD_DURATIONS),
            "model_cost": st.dictionaries(st.sampled_from(["m", "gpt-4o"]), small_amounts, max_size=2),
        },
    ),
}
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": hostile_text, "content": st.one_of(hostile_text, anything)}), max_size=3),
    st.lists(anything, min_size=1, max_size=3),
    anything,
)
VALID["text"] = st.text(max_size=30)
VALID["messages"] = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=30)}),
    min_size=1,
    max_size=3,
)
VALID["key"] = VALID["user"]
VALID["field"] = st.sampled_from(["total_budget", "current_cost", "duration", "model_cost"])
VALID["value"] = small_amounts
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "text": st.one_of(hostile_text, anything),
    "messages": messages,
    "key": st.one_of(hostile_text, keys),  # a mapping's keys are hashable
    "field": st.one_of(st.sampled_from(["created_at", "reservations", "applied", "x"]), hostile_text),
    "value": st.one_of(anything, durations, records),
    "user": users,
    "maybe_user": users,
    "budget": amounts,
    "duration": durations,
    "created_at": timestamps,
    "amount": amounts,
    "maybe_amount": amounts,
    "model": models,
    "call_id": call_ids,
    "maybe_call_id": call_ids,
    "ttl": ttls,
    "mode": modes,
    "default": defaults,
    "record": records,
    "fields": field_dicts,
}


class Arguments(dict[str, Any]):
    """Drawn arguments, and the names of those drawn hostile (for the tally)."""

    hostile: frozenset[str] = frozenset()


def arguments(**kinds: str) -> st.SearchStrategy[Arguments]:
    """Arguments named as given, each of the kind given (a key of VALID): valid, but for at
    most two of them, hostile (so that about one example in three is all valid)."""

    @st.composite
    def draw_arguments(draw: st.DrawFn) -> Arguments:
        hostile = draw(st.sets(st.sampled_from(sorted(kinds)), max_size=min(2, len(kinds))))
        drawn = Arguments(
            {name: draw(HOSTILE[kind] if name in hostile else VALID[kind]) for name, kind in kinds.items()}
        )
        drawn.hostile = frozenset(hostile)
        return drawn

    return draw_arguments()


# BudgetGuard's settings (see guard.BudgetGuard.__init__).
for kind, good in {
    "guard_mode": st.sampled_from(["strict", "soft"]),
    "unknown_users": st.sampled_from(["track", "deny", "create"]),
    "on_store_error": st.sampled_from(["closed", "open"]),
    "lease_seconds": st.sampled_from([1, 30, 86_400, 2.5]),
    "output_token_cap": st.sampled_from([1, 4096, 100_000]),
    "alert_threshold": st.sampled_from([None, 0.5, 1]),
    "global_budget": st.just("process"),
    "global_duration": st.just(None),
}.items():
    VALID[kind] = good
    HOSTILE[kind] = st.one_of(anything, amounts, durations, st.sampled_from([0, -1, 0.5, 86_401, 10**400, "store"]))


hostile_users = st.dictionaries(hostile_text, records, max_size=4)  # users of a store file
