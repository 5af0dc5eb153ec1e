"""Budgets in Redis: one budget shared by every process on every machine that uses it.

Each operation is one Lua script (``redis_budget.lua``, shipped beside this module) run
atomically by the server in one round trip; the script mirrors :mod:`..budget`, and every
argument is validated in Python with budget.py's checks before it is sent. Time is this
process's ``clock`` (``time.time`` unless replaced), sent with each call, so windows and
leases follow the same clock as the other stores.

Key layout, for project ``p`` (the project name is percent-quoted, so it holds no ``:``)::

    litellm_budget:p:users              set    every user of the project
    litellm_budget:p:user:<user>        hash   the user's record:
        total_budget, current_cost,            numbers as text ("%.17g": exact doubles);
        created_at, last_updated_at,           total_budget absent = no limit,
        duration                               duration (days) absent = never resets
        overruns, overrun_cost                 absent until a call costs more than its hold
        m:<model>                              spend on that model this window
        r:<call id>                            a hold: "<amount> <expires_at>"
        applied                                call ids already charged, oldest first:
                                               JSON [[id, "<time>"], ...]
        extra                                  JSON of fields LiteLLM or others added
    litellm_budget:p:call:<call id>     string the user holding that call's hold; it
                                               expires with the lease (PX), so a hold
                                               nobody settles disappears from the server

A record is one hash, read whole and rewritten whole by each change: it stays small (a
user's holds in flight and at most ``APPLIED_ID_LIMIT`` recent call ids), and the reply to a
change is the record as written, in the same round trip. Expired holds stop counting at once
and are dropped by the next write of the record; their call keys expire by themselves.
Scripts build key names from the prefix (settle finds the user from the call id), so this
store needs a single Redis server, not Redis Cluster.

redis-py is an optional extra (``pip install litellm_budget_plugin[redis]``), imported when a
store is made. Connection failures raise :class:`StoreUnavailableError` naming the URL
(without its password); clients are recreated in a forked child. Commands are not retried:
a write whose reply was lost may have been applied, and only charges with call ids are safe
to repeat.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

from .. import budget
from ..budget import Mode, UserRecord
from ..errors import (
    ConfigurationError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
    UnknownUserError,
    over_budget,
)
from ..limits import OWN_FIELDS
from .base import NewBudget, WritesAtOnce

KEY_ROOT = "litellm_budget"
DEFAULT_PROJECT = "default"
DEFAULT_TIMEOUT = 5.0
logger = logging.getLogger(__name__)


class RedisStore(WritesAtOnce):
    """Budgets in Redis, shared by every process and machine that points at the same server.

    :param url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` for TLS;
        redis-py's query options (``?socket_timeout=1``) are honoured.
    :param project: keys are namespaced by it, so projects sharing a server never mix.
    :param timeout: seconds to wait to connect and for each reply before
        :class:`StoreUnavailableError` (0: wait as long as the operating system does).
    :param options: passed on to ``redis.Redis.from_url``.
    :raises ConfigurationError: redis-py is not installed, or the URL or project is unusable.

    >>> store = RedisStore("redis://localhost:6379/0", project="chatbot")  # doctest: +SKIP
    >>> store.set_budget("alice", 10.0, "daily")["total_budget"]  # doctest: +SKIP
    10.0
    """

    def clock(self) -> float:
        """The time now, read at each call (see :meth:`RecordStore.clock <.base.RecordStore.clock>`)."""
        return time.time()

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        project: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> None:
        project = DEFAULT_PROJECT if project is None else project
        if not isinstance(project, str) or not project.strip():
            raise ConfigurationError(f"project must be a non-empty string, got {project!r}")
        self._url = url
        self.project = project
        self.prefix = f"{KEY_ROOT}:{quote(project, safe='')}:"
        self.safe_url = _without_password(url)
        timeout = budget.check_amount("timeout", timeout)
        self._redis = _import_redis()
        self._options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout or None,
            "socket_connect_timeout": timeout or None,
            # No retries: a command whose reply was lost may have run (see the module docstring).
            # A connection the server closed is replaced when taken from the pool anyway.
            "retry": self._redis.retry.Retry(self._redis.backoff.NoBackoff(), 0),
            **options,
        }
        self._lock = threading.Lock()
        self._pid = 0
        self._client: Any = None
        self._script: Any = None
        self._connect()  # parses the URL now; redis-py connects on first use

    def __repr__(self) -> str:
        return f"RedisStore({self.safe_url!r}, project={self.project!r})"

    # -- reads ---------------------------------------------------------------------------

    def get(self, user: str) -> UserRecord | None:
        budget.check_user(user)
        now = self.clock()
        record = _record(user, self._run("get", now, user)[1])
        return None if record is None else budget.current_window(record, now)

    def all(self) -> dict[str, UserRecord]:
        """Every user's record, in user order."""
        now = self.clock()
        records = {}
        for user, fields in sorted(self._run("all", now)[1:], key=lambda entry: str(entry[0])):
            try:
                record = _record(user, fields)
            except StoreCorruptError as exc:  # reported for that user only (get raises it)
                logger.warning("%s: left out of the listing: %s", self, exc)
                continue
            if record is not None:
                records[user] = budget.current_window(record, now)
        return records

    # -- writes --------------------------------------------------------------------------

    def set_budget(
        self,
        user: str,
        total_budget: float | None,
        duration: float | str | None = None,
        created_at: float | None = None,
    ) -> UserRecord:
        budget.check_user(user)
        now = self.clock()
        fresh = budget.new_record(total_budget, duration, now, created_at)
        reply = self._run(
            "set_budget",
            now,
            user,
            _opt(fresh["total_budget"]),
            _opt(fresh.get("duration")),
            _opt(None if created_at is None else fresh["created_at"]),
        )
        return _written(user, reply)

    def put(self, user: str, record: UserRecord) -> None:
        budget.check_user(user)
        checked = budget.check_record(user, record)
        fields = _fields(user, checked)
        self._run("put", self.clock(), user, len(fields), *fields)

    def set_fields(self, user: str, fields: Mapping[str, object]) -> UserRecord:
        budget.check_user(user)
        checked = json.dumps(budget.check_fields(user, fields))
        return _written(user, self._run("set_fields", self.clock(), user, checked))

    def delete(self, user: str) -> bool:
        budget.check_user(user)
        return bool(self._run("delete", self.clock(), user)[1])

    def reset(self, user: str) -> UserRecord:
        budget.check_user(user)
        return _written(user, self._run("reset", self.clock(), user))

    def roll(self, user: str) -> UserRecord:
        budget.check_user(user)
        return _written(user, self._run("roll", self.clock(), user))

    def charge(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None = None,
        default: NewBudget | None = None,
        held: float | None = None,
    ) -> UserRecord:
        budget.check_user(user)
        cost = budget.check_amount("cost", cost)
        _check_model(model)
        if call_id is not None:
            budget.check_call_id(call_id)
        held = None if held is None else budget.check_amount("held amount", held)
        now = self.clock()
        reply = self._run("charge", now, user, cost, model, _opt(call_id), *_default(default, now), _opt(held))
        return _written(user, reply, cost)

    def reserve(
        self,
        user: str,
        call_id: str,
        amount: float,
        ttl: float,
        mode: Mode = "strict",
        default: NewBudget | None = None,
        at_least: float | None = None,
    ) -> UserRecord:
        amount, ttl = budget.check_reservation(user, call_id, amount, ttl, mode, at_least)
        now = self.clock()
        reply = self._run("reserve", now, user, call_id, amount, ttl, mode, *_default(default, now), _opt(at_least))
        if reply[0] == "over":
            spend, limit, held = (float(x) for x in reply[1:4])
            raise over_budget(user, spend, limit, amount, held)
        return _written(user, reply)

    def settle(self, call_id: str, actual_cost: float, model: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        cost = budget.check_amount("actual cost", actual_cost)
        _check_model(model)
        if user is not None:
            budget.check_user(user)
        reply = self._run("settle", self.clock(), call_id, cost, model, _opt(user))
        if reply[0] == "too_large":
            raise budget.too_large(cost)
        return bool(reply[1])

    def release(self, call_id: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        if user is not None:
            budget.check_user(user)
        return bool(self._run("release", self.clock(), call_id, _opt(user))[1])

    def close(self) -> None:
        """Close this process's connections; the store reconnects if it is used again."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()

    # -- the boundary with redis-py ------------------------------------------------------

    def _connect(self) -> None:
        try:
            self._client = self._redis.Redis.from_url(self._url, **self._options)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self.safe_url!r}: {exc}") from exc
        self._script = self._client.register_script(_lua_source())
        self._pid = os.getpid()

    def _run(self, op: str, now: float, *args: str | float | int) -> list[Any]:
        """Run one operation of the script; translate redis-py's errors to ours."""
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            with self._lock:
                if self._pid != os.getpid():
                    self._connect()
        errors = self._redis.exceptions
        script_args = [self.prefix, op, now, budget.APPLIED_ID_TTL_SECONDS, budget.APPLIED_ID_LIMIT, *args]
        try:
            raw = self._script(args=script_args)
        except (errors.ConnectionError, errors.TimeoutError, errors.ReadOnlyError, OSError) as exc:
            raise StoreUnavailableError(f"Redis at {self.safe_url} cannot be reached: {exc}") from exc
        except errors.RedisError as exc:
            raise StoreError(f"Redis at {self.safe_url} failed: {exc}") from exc
        except UnicodeError as exc:  # a lone surrogate in a user id or model name
            raise ConfigurationError(f"cannot send to Redis: {exc}") from exc
        try:
            reply = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise StoreCorruptError(f"Redis at {self.safe_url} sent {raw!r}: {exc}") from exc
        return cast(list[Any], reply)


@cache
def _lua_source() -> str:
    return resources.files(__package__).joinpath("redis_budget.lua").read_text(encoding="utf-8")


def _import_redis() -> Any:
    try:
        for module in ("redis.backoff", "redis.exceptions", "redis.retry"):
            importlib.import_module(module)
        return importlib.import_module("redis")
    except ImportError as exc:
        raise ConfigurationError("the Redis store needs redis-py: pip install litellm_budget_plugin[redis]") from exc


def _without_password(url: str) -> str:
    """The URL as it may be shown in messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        user = f"{parts.username}@" if parts.username else ""
        netloc = user + host + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable Redis URL>"


def _check_model(model: object) -> None:
    budget.check_model_name(model)


def _opt(value: str | float | None) -> str | float:
    """None travels as '' (no number or call id is empty)."""
    return "" if value is None else value


def _default(default: NewBudget | None, now: float) -> tuple[str | float, str | float, str]:
    """A new user's budget as script arguments, validated now so bad input never reaches Redis."""
    if default is None:
        return "", "", "0"
    checked = budget.check_default(default)
    fresh = budget.new_record(checked["total_budget"], checked["duration"], now)
    return _opt(fresh["total_budget"]), _opt(fresh.get("duration")), "1"


def _fields(user: str, record: UserRecord) -> list[str]:
    """A checked record as the hash fields the script reads (see the key layout)."""
    fields = [
        "current_cost",
        repr(record["current_cost"]),
        "created_at",
        repr(record["created_at"]),
        "last_updated_at",
        repr(record["last_updated_at"]),
    ]
    if record["total_budget"] is not None:
        fields += ["total_budget", repr(record["total_budget"])]
    for name in ("duration", "overruns", "overrun_cost"):
        if name in record:
            fields += [name, repr(record[name])]
    extra = {k: v for k, v in record.items() if k not in OWN_FIELDS}
    if extra:
        try:
            fields += ["extra", json.dumps(extra, allow_nan=False)]
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"record of user {user!r} has fields that are not JSON: {exc}") from exc
    for model, cost in record["model_cost"].items():
        fields += [f"m:{model}", repr(cost)]
    for call_id, held in record.get("reservations", {}).items():
        fields += [f"r:{call_id}", f"{held['amount']!r} {held['expires_at']!r}"]
    applied = [[call_id, repr(at)] for call_id, at in record.get("applied", {}).items()]
    if applied:
        fields += ["applied", json.dumps(applied)]
    return fields


def _record(user: str, fields: Sequence[str]) -> UserRecord | None:
    """A record from the hash fields the script sends back; None if there are none."""
    if not fields:  # cjson sends an empty list as {}
        return None
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    try:
        total = values.pop("total_budget", None)
        record: dict[str, Any] = {
            "total_budget": None if total is None else float(total),
            "current_cost": float(values.pop("current_cost")),
            "model_cost": {},
            "created_at": float(values.pop("created_at")),
            "last_updated_at": float(values.pop("last_updated_at")),
        }
        if "duration" in values:
            record["duration"] = float(values.pop("duration"))
        if "overruns" in values:
            record["overruns"] = int(values.pop("overruns"))
        if "overrun_cost" in values:
            record["overrun_cost"] = float(values.pop("overrun_cost"))
        extra = json.loads(values.pop("extra", "{}"))
        applied = json.loads(values.pop("applied", "[]"))
        reservations = {}
        for field, value in values.items():
            kind, _, name = field.partition(":")
            if kind == "m":
                record["model_cost"][name] = float(value)
            elif kind == "r":
                amount, expires_at = value.split(" ")
                reservations[name] = {"amount": float(amount), "expires_at": float(expires_at)}
        for key, value in extra.items():
            record.setdefault(key, value)
        if reservations:
            record["reservations"] = reservations
        if applied:
            record["applied"] = {call_id: float(at) for call_id, at in applied}
        return budget.check_record(budget.check_user(user), record)
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:  # ConfigurationError too
        raise StoreCorruptError(f"the Redis record of user {user!r} is not what this store writes: {exc}") from exc


def _written(user: str, reply: list[Any], cost: float = math.nan) -> UserRecord:
    """The record a write sent back, or the error it reported."""
    status = reply[0]
    if status == "unknown":
        raise UnknownUserError(user)
    if status == "too_large":
        raise budget.too_large(cost)
    record = _record(user, reply[1]) if len(reply) > 1 else None
    if record is None:
        raise StoreError(f"the record of user {user!r} vanished while it was written")
    return record
