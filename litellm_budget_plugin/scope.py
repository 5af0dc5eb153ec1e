"""Attribution without ``user=``: ``with budget_scope(user="alice", team="red", tags=[...]):``.

Apps whose litellm calls are made by a framework (LangChain's ``ChatLiteLLM``, DSPy, the OpenAI
Agents SDK's litellm model...) cannot pass ``user=`` or ``metadata=`` on each request. A scope
names the user, team and tags of every litellm call made inside it; BudgetGuard reads it as each
call starts (:func:`call_subjects`).

The scope is a :class:`contextvars.ContextVar`, so it follows the code run inside it: asyncio
tasks created there (a task copies its creator's context), ``asyncio.to_thread``, and threads
whose target runs in a copied context (``contextvars.copy_context().run``). A plain
``threading.Thread`` or an executor's ``submit`` starts from an empty context: calls made there
are not attributed unless the target is wrapped so. Scopes nest: an inner user or team replaces
the outer one for its duration, inner tags are added to the outer ones.

Imports no litellm: the package root exports it without the import's cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .limits import check_user
from .subjects import MAX_TAGS, check_subject, kind_of, tag_keys, team_key


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """The attribution in force: the user, the team (its key, ``"team:red"``) and the tags (their
    keys, ``"tag:search"``) that litellm calls made here are charged to."""

    user: str | None = None
    team: str | None = None
    tags: tuple[str, ...] = ()


_NO_SCOPE = BudgetScope()
_current: ContextVar[BudgetScope] = ContextVar("litellm_budget_plugin_scope", default=_NO_SCOPE)


def current_scope() -> BudgetScope:
    """The scope in force here (no user, team or tags outside every :func:`budget_scope`)."""
    return _current.get()


def budget_scope(
    user: str | None = None, team: str | None = None, tags: Collection[str] | None = None
) -> contextlib.AbstractContextManager[BudgetScope]:
    """Charge every litellm call made inside ``with budget_scope(...)`` to ``user`` (unless the
    call passes ``user=``), to ``team`` (unless its ``metadata`` names one) and to ``tags`` (added
    to its ``metadata["tags"]``). The ``with`` gives the :class:`BudgetScope` in force.

    :raises ConfigurationError: at once, naming the problem, for a user that is not a user id
        (``"foo:bar"``, ``"team:red"``), an empty team, tags that are not a list of strings, or
        more than :data:`~.subjects.MAX_TAGS` tags with those of the scopes around it.
    """
    given = BudgetScope(
        user=None if user is None else _user_key(user),
        team=None if team is None else team_key(team),
        tags=() if tags is None else tag_keys(tags),
    )
    return _entered(given)


@contextlib.contextmanager
def _entered(given: BudgetScope) -> Iterator[BudgetScope]:
    outer = _current.get()
    scope = BudgetScope(
        user=given.user or outer.user,
        team=given.team or outer.team,
        tags=_more_tags(outer.tags, given.tags, "budget_scope"),
    )
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def call_subjects(request: Mapping[str, Any], anonymous_user: str | None) -> tuple[str, ...]:
    """The budgets a litellm call is held and charged against, by store key: its user, its team,
    its tags, without repeats (the user's own team is added by the store, from its record).

    The user is the call's ``user=``, else the scope's, else ``anonymous_user``; the team is
    ``metadata["team"]``, else the scope's; the tags are ``metadata["tags"]`` (LiteLLM's
    convention) and the scope's. A call without a user is held against its team and tags alone
    (the first of them keeps the call's hold, see :class:`~.guard.BudgetGuard`); a call with
    none of them gives ``()``.

    :raises ConfigurationError: a ``user=`` that is not a user id, a ``metadata`` team or tags
        that are not text, too many tags; checked before anything is held.
    """
    scope = _current.get()
    user = request.get("user")
    user = check_user(user) if user else (scope.user or anonymous_user)
    metadata = request.get("metadata")
    team, tags = scope.team, scope.tags
    if isinstance(metadata, Mapping):
        if metadata.get("team") is not None:
            team = team_key(metadata["team"])
        if metadata.get("tags") is not None:
            tags = _more_tags(tag_keys(metadata["tags"]), tags, "metadata['tags'] with budget_scope")
    if user is None and team is None and not tags:
        return ()  # most calls without user=: nothing to hold
    return tuple(dict.fromkeys(key for key in (user, team, *tags) if key is not None))


def _user_key(user: object) -> str:
    """A scope's user: a user id, not a team's or a tag's key (those have parameters of their own)."""
    key = check_subject(user)
    kind = kind_of(key)
    if kind != "user":
        raise ConfigurationError(f"budget_scope(user={key!r}) names a {kind}, not a user: pass {kind}= for it")
    return key


def _more_tags(first: tuple[str, ...], then: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Two lists of tag keys as one, without repeats, at most :data:`~.subjects.MAX_TAGS`."""
    if not first or not then:
        return first or then
    tags = tuple(dict.fromkeys((*first, *then)))
    if len(tags) > MAX_TAGS:
        raise ConfigurationError(f"{where}: a call may carry at most {MAX_TAGS} tags, got {len(tags)}")
    return tags
