"""A drop-in for ``litellm.BudgetManager``, over any store, without its faults.

LiteLLM's class keeps every user in a dict and rewrites the whole file from a background
thread after each change: changes are lost between processes, the file is torn when the
process dies, and each change costs time in proportion to the number of users. Here every
method is one atomic store operation that is durable before it returns.

LiteLLM's code also changes that dict directly (``manager.user_dict[user]["current_cost"] = 0``)
and saves it later. Here ``user_dict`` is read from the store, and each change made to it is
one store operation at once, of the fields changed and no others.

Budgets beyond a user's are records too: ``create_budget(50, user="team:red", duration="monthly")``
gives team red a budget, ``create_budget(5, "alice", "daily", team="red", windows=[...])`` puts
alice in it and adds windows ("$100 a month", "$1 a day on gpt-4o"); see :mod:`.subjects` and
:mod:`.windows`. LiteLLM's own class reads such records as users with extra fields.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Self

from . import budget, pricing, subjects
from .errors import ConfigurationError, UnknownUserError
from .limits import SUBJECT_FIELDS
from .stores import BudgetStore, store_from_url

Duration = Literal["daily", "weekly", "monthly", "yearly"] | str | float


class BudgetManager:
    """LiteLLM's ``BudgetManager`` API, backed by a shared, crash-safe store.

    :param project_name: the project: it namespaces a Redis or HTTP store; a local file holds one project.
    :param client_type: ``"local"`` (a store chosen by ``store=``, ``$LITELLM_BUDGET_STORE`` or
        ``user_cost.json``) or ``"hosted"`` (a budget server at ``api_base``).
    :param store: a file path, a URL, or a store object.
    """

    def __init__(
        self,
        project_name: str,
        client_type: str = "local",
        api_base: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        store: str | os.PathLike[str] | BudgetStore | None = None,
    ) -> None:
        if not isinstance(project_name, str) or not project_name:
            raise ConfigurationError("project_name must be a non-empty string")
        self.project_name = project_name
        self.client_type = client_type
        self.api_base = api_base
        self.headers = headers
        if client_type == "local":
            # A Redis or HTTP store keeps each project apart; a file holds one project.
            self.store = store_from_url(store, project=project_name)
        elif client_type == "hosted":
            if api_base is None:
                raise ConfigurationError('client_type="hosted" needs api_base, the budget server URL')
            self.store = store_from_url(api_base, project=project_name, headers=headers)
        else:
            raise ConfigurationError(f'client_type must be "local" or "hosted", got {client_type!r}')

    def __repr__(self) -> str:
        return f"BudgetManager({self.project_name!r}, store={self.store!r})"

    # -- budgets -------------------------------------------------------------------------

    def create_budget(
        self,
        total_budget: float,
        user: str,
        duration: Duration | None = None,
        created_at: float | None = None,
        *,
        team: str | None = None,
        windows: list[Mapping[str, Any]] | None = None,
        timezone: str | None = None,
    ) -> dict[str, Any]:
        """Give ``user`` a budget; for a known user, change it and keep what was spent.

        ``user`` is a user id, ``"team:<name>"`` or ``"tag:<name>"``. The keywords, beyond
        LiteLLM's, are set in the same write (None leaves what the record has):

        :param team: the team the user belongs to (``"red"``): its calls are held and charged
            against ``team:red`` too. A team without a budget of its own is tracked, not limited.
        :param windows: more windows, each ``{"budget": 100, "duration": "monthly"}``, with
            ``"timezone"`` for a calendar reset and ``"model"`` for a per-model cap; they replace
            the record's (one of the same length and model keeps what it has spent).
        :param timezone: makes the main window a calendar one (local midnight, Monday, the 1st).
        :raises ConfigurationError: naming the bad value; nothing is changed.
        """
        given = {"team": team, "windows": windows, "timezone": timezone}
        fields = {name: value for name, value in given.items() if value is not None}
        record = self.store.set_budget(user, total_budget, duration, created_at, fields=fields or None)
        return _RecordView(self.store, user, record)

    def get_total_budget(self, user: str) -> float | None:
        return self._record(user)["total_budget"]

    def get_current_cost(self, user: str) -> float:
        return self._record(user)["current_cost"]

    def get_model_cost(self, user: str) -> dict[str, float]:
        return dict(self._record(user)["model_cost"])

    def is_valid_user(self, user: str) -> bool:
        return self.store.get(user) is not None

    def get_users(self) -> list[str]:
        return list(self.store.all())

    @property
    def user_dict(self) -> dict[str, dict[str, Any]]:
        """Every record as LiteLLM's attribute of that name shows them, read now.

        Changes write through to the store at once: setting a field (``total_budget``,
        ``current_cost``, ``model_cost``, ``duration``, ``created_at``, ``last_updated_at``,
        ``team``, ``timezone``, ``windows``) sets that field alone, so charges made meanwhile
        by other processes are kept;
        assigning a whole record adds or replaces the user, ``del`` deletes one. A change that
        cannot be made raises :class:`ConfigurationError` and changes nothing.
        """
        return _UserDict(self.store, self.store.all())

    # -- costs ---------------------------------------------------------------------------

    def projected_cost(self, model: str, messages: Iterable[Mapping[str, Any]], user: str) -> float:
        """Spend so far plus this prompt's input cost: its tokens counted as
        ``litellm.token_counter(messages=...)`` counts them, chat framing included (list
        content and tool calls count too)."""
        budget.check_model_name(model)
        given = type(messages).__name__
        is_list = isinstance(messages, Iterable) and not isinstance(messages, str | bytes | Mapping)
        messages = list(messages) if is_list else []
        if not is_list or not all(isinstance(message, Mapping) for message in messages):
            raise ConfigurationError(
                f"messages must be a list of message dicts ({{'role': ..., 'content': ...}}), got {given}"
            )
        current = self._record(user)["current_cost"]
        return current + pricing.estimate_cost(model, messages=messages)

    def update_cost(
        self,
        user: str,
        completion_obj: Any = None,
        model: str | None = None,
        input_text: str | None = None,
        output_text: str | None = None,
        *,
        team: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Charge a response, or texts priced as LiteLLM does; returns ``{"user": record}``.

        The charge goes to the team the user's record names too, and, given here, to the call's
        own ``team`` and ``tags`` (LiteLLM's ``metadata["tags"]``), in the same write."""
        budget.check_user(user)
        others = _call_subjects(team, tags)
        if model is not None:
            budget.check_model_name(model)
        for name, text in (("input_text", input_text), ("output_text", output_text)):
            if text is not None and not isinstance(text, str):
                raise ConfigurationError(f"{name} must be a string, got {type(text).__name__}")
        if model and input_text is not None and output_text is not None:
            cost = pricing.text_cost(model, input_text, output_text)
        elif completion_obj is not None:
            cost = pricing.response_cost(completion_obj, model)
            model = budget.check_model_name(str(completion_obj["model"]))
        else:
            raise ConfigurationError("update_cost needs a completion_obj, or model, input_text and output_text")
        call_id = getattr(completion_obj, "id", None) if completion_obj is not None else None
        record = self.store.charge(user, cost, model, call_id=call_id or None, subjects=others)
        return {"user": _RecordView(self.store, user, record)}

    def reset_cost(self, user: str) -> dict[str, Any]:
        return {"user": _RecordView(self.store, user, self.store.reset(user))}

    def reset_on_duration(self, user: str) -> None:
        """Windows roll by themselves on every read and write; this persists the roll now."""
        self.store.roll(user)

    def update_budget_all_users(self) -> None:
        for user, record in self.store.all().items():
            if "duration" in record or "windows" in record:
                self.store.roll(user)

    def save_data(self) -> dict[str, str]:
        """Changes are saved as they happen; this also brings the JSON file up to date."""
        compact = getattr(self.store, "compact", None)
        if callable(compact):
            compact()
        return {"status": "success"}

    def _save_data_thread(self) -> None:
        """LiteLLM saves in a background thread under this name (and its tests replace it);
        here every change is saved before it returns, so this only brings the file up to date."""
        self.save_data()

    def close(self) -> None:
        self.store.close()

    def _record(self, user: str) -> budget.UserRecord:
        record = self.store.get(user)
        if record is None:
            raise UnknownUserError(user)
        return record


def _call_subjects(team: str | None, tags: Sequence[str] | None) -> list[str]:
    """The budgets a call names besides its user's: its team's and its tags' keys."""
    keys = [] if team is None else [subjects.team_key(team)]
    return keys if tags is None else [*keys, *subjects.tag_keys(tags)]


# Fields of a record that ``del user_dict[user][name]`` drops (the others are set instead).
_DELETABLE = ("duration", *SUBJECT_FIELDS)


class _WritesThrough(dict[str, Any]):
    """A dict that sends each change to the store (``_apply``) and shows what the store holds.

    It is a dict, so ``json.dumps`` and ``isinstance(x, dict)`` work as on LiteLLM's; its
    copies (``dict(x)``, ``x.copy()``, ``copy.deepcopy``, pickle) are plain dicts.
    """

    def _apply(self, changes: dict[str, Any], removed: tuple[str, ...]) -> None:
        raise NotImplementedError

    def __setitem__(self, key: str, value: Any) -> None:
        self._apply({key: value}, ())

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._apply({}, (key,))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._apply(dict(*args, **kwargs), ())

    def __ior__(self, other: Any) -> Self:  # type: ignore[override,misc]
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def popitem(self) -> tuple[str, Any]:
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self))
        return key, self.pop(key)

    def clear(self) -> None:
        self._apply({}, tuple(self))

    def __reduce_ex__(self, protocol: Any) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (dict(self),)

    def _show(self, content: Mapping[str, Any]) -> None:
        dict.clear(self)
        dict.update(self, content)


class _RecordView(_WritesThrough):
    """One user's record; setting fields sets them, and only them, in the store at once."""

    def __init__(self, store: BudgetStore, user: str, record: budget.UserRecord) -> None:
        super().__init__()
        self._store, self._user = store, user
        self._show_record(record)

    def _apply(self, changes: dict[str, Any], removed: tuple[str, ...]) -> None:
        fields = dict(changes)
        for name in removed:
            if name not in _DELETABLE:
                raise ConfigurationError(
                    f"cannot delete field {name!r} of user {self._user!r}: set it instead "
                    f"(only {', '.join(_DELETABLE)} can be deleted; without duration a budget never resets)"
                )
            fields[name] = None
        self._show_record(self._store.set_fields(self._user, fields))

    def _show_record(self, record: budget.UserRecord) -> None:
        view = budget.litellm_view(record)
        view["model_cost"] = _ModelCostView(self._user, view["model_cost"])
        self._show(view)


class _ModelCostView(_WritesThrough):
    """A user's spend by model: changed as a whole only (a charge elsewhere may be under way)."""

    def __init__(self, user: str, model_cost: Mapping[str, float]) -> None:
        super().__init__(model_cost)
        self._user = user

    def _apply(self, changes: dict[str, Any], removed: tuple[str, ...]) -> None:
        raise ConfigurationError(
            f"cannot change user_dict[{self._user!r}]['model_cost'] in place: "
            f"assign the whole dict, user_dict[{self._user!r}]['model_cost'] = {{...}}"
        )


class _UserDict(_WritesThrough):
    """Every user's record; assigning a record adds or replaces that user, ``del`` deletes one."""

    def __init__(self, store: BudgetStore, records: Mapping[str, budget.UserRecord]) -> None:
        super().__init__({user: _RecordView(store, user, record) for user, record in records.items()})
        self._store = store

    def _apply(self, changes: dict[str, Any], removed: tuple[str, ...]) -> None:
        records = {user: _whole_record(user, record) for user, record in changes.items()}  # all checked first
        for user in removed:
            self._store.delete(user)
            dict.pop(self, user, None)
        for user, record in records.items():
            self._store.put(user, record)
            written = self._store.get(user)
            if written is not None:
                dict.__setitem__(self, user, _RecordView(self._store, user, written))


def _whole_record(user: str, record: object) -> budget.UserRecord:
    """A record assigned to ``user_dict[user]``, as LiteLLM's create_budget writes one:
    fields left out take LiteLLM's defaults, and the window starts now."""
    user = budget.check_user(user)
    if not isinstance(record, Mapping):
        raise ConfigurationError(
            f'user_dict[{user!r}] must be a dict such as {{"total_budget": 10}}, got {type(record).__name__}'
        )
    raw = dict(record)
    raw.setdefault("created_at", time.time())
    return budget.check_record(user, raw)
