"""The budget server's atomic operations and the checks of every field a client sends,
made before a store is touched (see :mod:`.server`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import budget, ledger, subjects
from .errors import ConfigurationError, UnknownUserError
from .stores import BudgetStore

# --- request validation -----------------------------------------------------------------

Check = Callable[[Any], Any]


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def check_object(name: str) -> Check:
    def check(value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigurationError(f"{name} must be an object, got {type(value).__name__}")
        return value

    return check


def _amount(name: str) -> Check:
    return lambda value: budget.check_amount(name, value)


@dataclass(frozen=True)
class Op:
    fields: Mapping[str, tuple[Check, bool]]  # name -> (check, required)
    call: Callable[[BudgetStore, dict[str, Any]], object]
    missing: Callable[[dict[str, Any]], object]  # the answer for a project with no data
    creates: Callable[[dict[str, Any]], bool] = field(default=lambda _args: False)


def _unknown_user(args: dict[str, Any]) -> object:
    raise UnknownUserError(args["user"])


_USER = (budget.check_user, True)
_CALL_ID = (budget.check_call_id, True)
_MODEL = (budget.check_model_name, True)
_DEFAULT = (_optional(budget.check_default), False)
_SUBJECTS = (_optional(subjects.check_subjects), False)
_USAGE = (_optional(ledger.usage_from_json), False)

OPS: dict[str, Op] = {
    "get": Op({"user": _USER}, lambda s, a: s.get(a["user"]), lambda _a: None),
    "all": Op({}, lambda s, _a: s.all(), lambda _a: {}),
    "set_budget": Op(
        {
            "user": _USER,
            "total_budget": (_optional(_amount("total_budget")), True),
            "duration": (_optional(budget.parse_duration), False),
            "created_at": (_optional(lambda value: budget.check_timestamp("created_at", value)), False),
            "fields": (_optional(check_object("fields")), False),
        },
        lambda s, a: s.set_budget(
            a["user"], a["total_budget"], a.get("duration"), a.get("created_at"), fields=a.get("fields")
        ),
        _unknown_user,
        creates=lambda _a: True,
    ),
    "put": Op(
        {"user": _USER, "record": (check_object("record"), True)},
        lambda s, a: s.put(a["user"], a["record"]),
        _unknown_user,
        creates=lambda _a: True,
    ),
    "set_fields": Op(
        {"user": _USER, "fields": (check_object("fields"), True)},
        lambda s, a: s.set_fields(a["user"], a["fields"]),
        _unknown_user,
    ),
    "delete": Op({"user": _USER}, lambda s, a: s.delete(a["user"]), lambda _a: False),
    "reset": Op({"user": _USER}, lambda s, a: s.reset(a["user"]), _unknown_user),
    "roll": Op({"user": _USER}, lambda s, a: s.roll(a["user"]), _unknown_user),
    "charge": Op(
        {
            "user": _USER,
            "cost": (_amount("cost"), True),
            "model": _MODEL,
            "call_id": (_optional(budget.check_call_id), False),
            "default": _DEFAULT,
            "held": (_optional(_amount("held amount")), False),
            "subjects": _SUBJECTS,
            "usage": _USAGE,
        },
        lambda s, a: s.charge(
            a["user"],
            a["cost"],
            a["model"],
            a.get("call_id"),
            a.get("default"),
            a.get("held"),
            subjects=a.get("subjects") or (),
            usage=a.get("usage"),
        ),
        _unknown_user,
        creates=lambda a: a.get("default") is not None,
    ),
    "reserve": Op(
        {
            "user": _USER,
            "call_id": _CALL_ID,
            "amount": (_amount("reservation amount"), True),
            "ttl": (_amount("reservation ttl"), True),
            "mode": (budget.check_mode, False),
            "default": _DEFAULT,
            "at_least": (_optional(_amount("reservation at_least")), False),
            "model": (_optional(budget.check_model_name), False),
            "subjects": _SUBJECTS,
        },
        lambda s, a: s.reserve(
            a["user"],
            a["call_id"],
            a["amount"],
            a["ttl"],
            a.get("mode", "strict"),
            a.get("default"),
            a.get("at_least"),
            model=a.get("model"),
            subjects=a.get("subjects") or (),
        ),
        _unknown_user,
        creates=lambda a: a.get("default") is not None,
    ),
    "settle": Op(
        {
            "call_id": _CALL_ID,
            "actual_cost": (_amount("actual cost"), True),
            "model": _MODEL,
            "user": (_optional(budget.check_user), False),
            "usage": _USAGE,
        },
        lambda s, a: s.settle(a["call_id"], a["actual_cost"], a["model"], a.get("user"), usage=a.get("usage")),
        lambda _a: False,
    ),
    "release": Op(
        {"call_id": _CALL_ID, "user": (_optional(budget.check_user), False)},
        lambda s, a: s.release(a["call_id"], a.get("user")),
        lambda _a: False,
    ),
}


def charged_by(name: str, args: Mapping[str, Any], result: object) -> tuple[tuple[str, ...], float, str] | None:
    """What an operation that went through charged, for observers: (budgets, cost, model). A
    ``charge`` names its user and ``subjects`` (the store adds the user's team); a ``settle``
    its user (the budgets its hold names are the store's to know), when it gives one."""
    if name == "charge":
        return (args["user"], *(args.get("subjects") or ())), args["cost"], args["model"]
    if name == "settle" and result and args.get("user") is not None:
        return (args["user"],), args["actual_cost"], args["model"]
    return None


def check_fields(op: Op, body: dict[str, Any]) -> dict[str, Any]:
    """The request's arguments, every one checked: a bad one is refused before any store is
    touched (the checks that need a record, such as overlapping windows, run in the store's
    atomic step, before it writes)."""
    unknown = sorted(set(body) - set(op.fields))
    if unknown:
        raise ConfigurationError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    args: dict[str, Any] = {}
    for name, (check, required) in op.fields.items():
        if name in body:
            args[name] = check(body[name])
        elif required:
            raise ConfigurationError(f"missing field {name!r}")
    if op.creates(args):  # a record may be made under this key: a team, a tag or a user
        subjects.check_subject(args["user"])
    if "record" in args:
        args["record"] = budget.check_record(args["user"], args["record"])
    if args.get("fields") is not None:
        args["fields"] = budget.check_fields(args["user"], args["fields"])
    return args
