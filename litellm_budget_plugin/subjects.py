"""Whose budgets a call is checked against: users, teams and tags, named in one key space.

Every budget is a record in the store under one key: a user id (``"alice"``), a team
(``"team:red"``), a tag (``"tag:search"``), or litellm's global budget (:data:`GLOBAL`). A key
that starts like a kind (lowercase letters, then ``:``) must name a known one, so that a typo
(``"taem:red"``) is refused instead of becoming a user nobody calls as. User ids without such
a prefix (``"alice@acme"``, ``"acme/alice"``, ``"Org:7"``) are users, as before.

A user belongs to a team through its record (the ``team`` field); a call adds a team and tags
of its own (``metadata={"team": ..., "tags": [...]}`` or :func:`~.scope.budget_scope`). The
subjects a call is held and charged against are decided by :func:`charged_subjects`, inside the
store's atomic step (the user's team is read there).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from .errors import GLOBAL_KEY, ConfigurationError
from .limits import UserRecord, check_text, check_user

# litellm.max_budget kept in the store (BudgetGuard(global_budget="store")); admitted with
# LiteLLM's own (soft) rule.
GLOBAL = GLOBAL_KEY
TEAM, TAG = "team", "tag"
KINDS = (TEAM, TAG)
# The most tags one call may carry (each is a budget checked in the call's admission).
MAX_TAGS = 32

Kind = Literal["user", "team", "tag"]
_KIND_PREFIX = re.compile(r"([a-z][a-z0-9_]{0,31}):")


def kind_of(key: str) -> Kind:
    """The kind of a store key (checked keys only: an unknown kind is a user here)."""
    if key.startswith("team:"):
        return "team"
    if key.startswith("tag:"):
        return "tag"
    return "user"


def check_subject(key: object) -> str:
    """A key a budget may be created under: a user id, ``team:<name>`` or ``tag:<name>``."""
    checked = check_user(key)
    match = _KIND_PREFIX.match(checked)
    if match is None:
        return checked
    kind = match.group(1)
    if kind not in KINDS:
        raise ConfigurationError(
            f"unknown subject kind {kind!r} in {checked[:80]!r}: budgets are for users, team:<name> and tag:<name>"
        )
    if not checked[match.end() :].strip():
        raise ConfigurationError(f"{checked!r} names no {kind}: use {kind}:<name>")
    return checked


def team_key(team: object) -> str:
    """The store key of a team given by name (``"red"``) or key (``"team:red"``)."""
    name = check_text("team", team).removeprefix("team:")
    if name.startswith("team:"):
        raise ConfigurationError(f"team must be a name or team:<name>, got {team!r:.80}")
    return check_subject(f"team:{name}")


def tag_keys(tags: object) -> tuple[str, ...]:
    """The store keys of a call's tags (a list of names, LiteLLM's ``metadata["tags"]``), in
    order, without repeats; at most :data:`MAX_TAGS`."""
    if isinstance(tags, str) or not isinstance(tags, Sequence | set | frozenset):
        raise ConfigurationError(f"tags must be a list of strings, got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ConfigurationError(f"a call may carry at most {MAX_TAGS} tags, got {len(tags)}")
    keys: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str):
            raise ConfigurationError(f"tags must be strings, got {type(tag).__name__} {tag!r:.60}")
        name = check_text("tag", tag)
        keys[check_subject(name if name.startswith("tag:") else f"tag:{name}")] = None
    return tuple(keys)


def check_subjects(subjects: object, teams: int = 1) -> tuple[str, ...]:
    """The budgets a store operation is given besides its user's: teams (at most ``teams``: a
    call's own; a hold's list may add its user's), tags (at most :data:`MAX_TAGS`) and the global
    budget, by key; never a user's, which a call is charged to only as its user."""
    if isinstance(subjects, str) or not isinstance(subjects, Sequence):
        raise ConfigurationError(f"subjects must be a list of budget keys, got {type(subjects).__name__}")
    if len(subjects) > MAX_TAGS + teams + 1:
        raise ConfigurationError(
            f"a call may be checked against at most {MAX_TAGS + teams + 1} budgets, got {len(subjects)}"
        )
    keys = tuple(dict.fromkeys(_subject_key(key) for key in subjects))
    kinds = [kind_of(key) for key in keys if key != GLOBAL]
    if kinds.count("user"):
        user = next(key for key in keys if key != GLOBAL and kind_of(key) == "user")
        raise ConfigurationError(f"subjects name teams, tags and {GLOBAL!r}, not users: {user[:80]!r} is a user id")
    if kinds.count("team") > teams:
        raise ConfigurationError(
            f"a call belongs to at most {teams} team(s) besides its user's, got {kinds.count('team')}"
        )
    if kinds.count("tag") > MAX_TAGS:
        raise ConfigurationError(f"a call may carry at most {MAX_TAGS} tags, got {kinds.count('tag')}")
    return keys


def check_subjects_once(subjects: object) -> tuple[str, ...]:
    """:func:`check_subjects`, checking a tuple seen before only once (a guard names the same
    few budgets on every call, and a store checks them on each of its operations); none, the
    usual call, needs no check."""
    if type(subjects) in (tuple, list) and not subjects:
        return ()
    if type(subjects) is tuple:
        try:
            return _checked_tuple(subjects)
        except TypeError:  # not hashable: not budget keys either, which the check says
            pass
    return check_subjects(subjects)


@functools.lru_cache(maxsize=1024)
def _checked_tuple(subjects: tuple[object, ...]) -> tuple[str, ...]:
    return check_subjects(subjects)


def _subject_key(key: object) -> str:
    if not isinstance(key, str):
        raise ConfigurationError(f"subjects must be budget keys (strings), got {type(key).__name__} {key!r:.60}")
    return check_subject(key)


def charged_subjects(user: str, record: UserRecord | None, subjects: Iterable[str] = ()) -> tuple[str, ...]:
    """The keys a call of ``user`` is held and charged against: the user, the team its record
    names, then ``subjects`` (the call's own team, tags, the global budget), without repeats."""
    keys = {user: None}
    team = None if record is None else record.get("team")
    if team and kind_of(user) == "user":
        keys[team_key(team)] = None
    for key in subjects:
        keys[key] = None
    return tuple(keys)
