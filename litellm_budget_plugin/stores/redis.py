"""Budgets in Redis: one budget shared by every process on every machine that uses it.

Each operation is one Lua script run atomically by the server in one round trip: two files
shipped beside this module, ``redis_records.lua`` (reading a record's hash, checking each field
it uses, writing it back) then ``redis_budget.lua`` (the arithmetic, mirroring :mod:`..budget`
and :mod:`..reservations`, and the operations). Every argument is validated in Python with
their checks before it is sent. A record holding a field this store would not write stops the
operation before anything is written: :class:`StoreCorruptError` names the record.

Time is this process's ``clock`` (``time.time`` unless replaced), sent with each call, so
windows and leases follow the same clock as the other stores. Lua has no timezone database:
each call also sends the start of the current period of every calendar window (a ``timezone``)
this client has met, and a script meeting another asks for it and is run again (see
:class:`._redis_records.CalendarPeriods`).

Configuring a record (``set_budget``, ``set_fields``) is rare and merges windows as
:func:`..budget.with_fields` does: it is computed here by that function, on the record read
under WATCH, and written in a MULTI that fails and is tried again if the record changed
meanwhile (optimistic locking), so it is as atomic as the scripts.

Key layout, for project ``p`` (the project name is percent-quoted, so it holds no ``:``)::

    litellm_budget:p:users              set    every budget of the project (users, team:<name>,
                                               tag:<name>, litellm.max_budget)
    litellm_budget:p:user:<key>         hash   the record of that budget:
        total_budget, current_cost,            numbers as text ("%.17g": exact doubles);
        created_at, last_updated_at,           total_budget absent = no limit,
        duration                               duration (days) absent = never resets
        overruns, overrun_cost                 absent until a call costs more than its hold
        team, timezone                         text: the user's team, the main window's zone
        windows                                JSON list of more windows, numbers as text:
                                               [{"budget": "5", "spend": "0.25", "start":
                                               "...", "duration": "1", "timezone": ..,
                                               "model": ..}, ...]
        m:<model>                              spend on that model this window
        r:<call id>                            a hold: "<amount> <expires_at>", then
                                               JSON {"model": .., "also": [keys]} if any
                                               (the user's hold lists the other budgets)
        applied                                call ids already charged, oldest first:
                                               JSON [[id, "<time>"], ...] (a user's record
                                               only: a team's or tag's sees too many calls)
        extra                                  JSON of fields LiteLLM or others added
    litellm_budget:p:call:<call id>     string the user holding that call's hold (never a
                                               team or tag it also holds); it goes when the
                                               hold leaves the user's record (settled,
                                               released, or expired and dropped by a write),
                                               not by a TTL of its own: until then settle and
                                               release find an expired hold by its call id,
                                               as the file store's journal does
    litellm_budget:p:ledger             stream the ledger: an entry per charge applied, its
                                               id the charge's time in ms, its one field
                                               ``e`` the entry as :func:`..ledger.encode`
                                               writes it (see :mod:`._redis_ledger`)

A record is one hash, read whole and rewritten whole by each change: it stays small (a
user's holds in flight and at most ``APPLIED_ID_LIMIT`` recent call ids), and the reply to a
change is the user's record as written, in the same round trip. Expired holds stop counting at
once and are dropped, with their call keys, by the next write of the record.
Scripts build key names from the prefix (a reservation reads the user's team, settle finds
the user from the call id), so this store needs a single Redis server, not Redis Cluster.

The ledger entry of a charge is added by the script that applies it, in the same round trip
(``charge``, ``settle``; ``charge_later`` is ``charge``): see :mod:`._redis_ledger`.

redis-py is an optional extra (``pip install litellm_budget_plugin[redis]``), imported when a
store is made. Connection failures raise :class:`StoreUnavailableError` naming the URL
(without its password); clients are recreated in a forked child. Commands are not retried:
a write whose reply was lost may have been applied, and only charges with call ids are safe
to repeat.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

from .. import budget, ledger, subjects
from ..budget import Mode, UserRecord
from ..errors import ConfigurationError, StoreCorruptError, StoreError, StoreUnavailableError, UnknownUserError
from ..ledger import DEFAULT_RETENTION_DAYS, LedgerEntry, Usage, check_retention_days
from ..subjects import check_subjects_once
from . import _redis_ledger
from ._at_once import WritesAtOnce
from ._redis_records import CalendarPeriods, default_args, fields_of, listed, opt, record_of, refusal, written
from .base import NewBudget

KEY_ROOT = "litellm_budget"
DEFAULT_PROJECT = "default"
DEFAULT_TIMEOUT = 5.0
# A configuration write tried again this often while others keep changing the record.
CONFIGURE_ATTEMPTS = 100
logger = logging.getLogger(__name__)


class RedisStore(WritesAtOnce):
    """Budgets in Redis, shared by every process and machine that points at the same server.

    :param url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` for TLS;
        redis-py's query options (``?socket_timeout=1``) are honoured.
    :param project: keys are namespaced by it, so projects sharing a server never mix.
    :param timeout: seconds to wait to connect and for each reply before
        :class:`StoreUnavailableError` (0: wait as long as the operating system does).
    :param ledger: keep a ledger of charges (a stream, see the module docstring), for reports:
        ``ledger_retention_days`` of them, and at most about ``ledger_max_entries`` (None: as
        many as those days hold; Redis keeps them in memory).
    :param options: passed on to ``redis.Redis.from_url``.
    :raises ConfigurationError: redis-py is not installed, or the URL, project or a ledger
        option is unusable.

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
        ledger: bool = True,
        ledger_retention_days: float = DEFAULT_RETENTION_DAYS,
        ledger_max_entries: int | None = None,
        **options: Any,
    ) -> None:
        project = DEFAULT_PROJECT if project is None else project
        self.keeps_ledger = bool(ledger)
        self.ledger_retention_days = check_retention_days(ledger_retention_days)
        self.ledger_max_entries = _redis_ledger.check_max_entries(ledger_max_entries)
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
        self._periods = CalendarPeriods()
        self._connect()  # parses the URL now; redis-py connects on first use

    def __repr__(self) -> str:
        return f"RedisStore({self.safe_url!r}, project={self.project!r})"

    # -- reads ---------------------------------------------------------------------------

    def get(self, user: str) -> UserRecord | None:
        budget.check_user(user)
        now = self.clock()
        record = record_of(user, self._run("get", now, user)[1])
        return None if record is None else budget.current_window(record, now)

    def all(self) -> dict[str, UserRecord]:
        """Every record, in key order."""
        now = self.clock()
        records = {}
        for user, fields in sorted(self._run("all", now)[1:], key=lambda entry: str(entry[0])):
            try:
                record = record_of(user, fields)
            except StoreCorruptError as exc:  # reported for that user only (get raises it)
                logger.warning("%s: left out of the listing: %s", self, exc)
                continue
            if record is not None:
                records[user] = budget.current_window(record, now)
        return records

    # -- configuration: computed in Python under WATCH -----------------------------------

    def set_budget(
        self,
        user: str,
        total_budget: float | None,
        duration: float | str | None = None,
        created_at: float | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> UserRecord:
        subjects.check_subject(user)
        now = self.clock()
        budget.new_record(total_budget, duration, now, created_at)  # validate before reading
        checked = None if fields is None else budget.check_fields(user, fields)

        def change(record: UserRecord | None) -> UserRecord:
            updated = budget.with_budget(record, total_budget, duration, now, created_at)
            return budget.with_fields(updated, checked or {}, now, user)  # as base.RecordStore.set_budget

        return self._configure(user, change)

    def set_fields(self, user: str, fields: Mapping[str, object]) -> UserRecord:
        budget.check_user(user)
        checked = budget.check_fields(user, fields)
        now = self.clock()

        def change(record: UserRecord | None) -> UserRecord:
            if record is None:
                raise UnknownUserError(user)
            return budget.with_fields(record, checked, now, user)

        return self._configure(user, change)

    def _configure(self, user: str, change: Callable[[UserRecord | None], UserRecord]) -> UserRecord:
        """Write ``change`` of the user's record, read and rewritten with nobody writing it
        in between (WATCH, then MULTI: tried again if someone did)."""
        key = f"{self.prefix}user:{user}"
        errors = self._redis.exceptions
        for _ in range(CONFIGURE_ATTEMPTS):
            with self._translated(), self._connection().pipeline() as pipe:
                try:
                    pipe.watch(key)
                    stored = pipe.hgetall(key)
                    fields = fields_of(user, change(record_of(user, [x for item in stored.items() for x in item])))
                    record = written(user, ["ok", fields])  # read back as it will be: checked before writing
                    pipe.multi()
                    self._script(args=self._args("put", self.clock(), user, len(fields), *fields), client=pipe)
                    pipe.execute()
                except errors.WatchError:
                    continue
            return record
        raise StoreError(f"the record of user {user!r} kept changing: not written after {CONFIGURE_ATTEMPTS} tries")

    # -- writes --------------------------------------------------------------------------

    def put(self, user: str, record: UserRecord) -> None:
        subjects.check_subject(user)
        checked = budget.check_record(user, record)
        fields = fields_of(user, checked)
        self._run("put", self.clock(), user, len(fields), *fields)

    def delete(self, user: str) -> bool:
        budget.check_user(user)
        return bool(self._run("delete", self.clock(), user)[1])

    def reset(self, user: str) -> UserRecord:
        budget.check_user(user)
        return written(user, self._run("reset", self.clock(), user))

    def roll(self, user: str) -> UserRecord:
        budget.check_user(user)
        return written(user, self._run("roll", self.clock(), user))

    def charge(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None = None,
        default: NewBudget | None = None,
        held: float | None = None,
        *,
        subjects: Sequence[str] = (),
        usage: Usage | None = None,
    ) -> UserRecord:
        budget.check_user(user)
        cost = budget.check_amount("cost", cost)
        budget.check_model_name(model)
        if call_id is not None:
            budget.check_call_id(call_id)
        held = None if held is None else budget.check_amount("held amount", held)
        others = check_subjects_once(subjects)
        usage = ledger.check_usage(usage)
        now = self.clock()
        reply = self._run(
            "charge",
            now,
            user,
            cost,
            model,
            opt(call_id),
            *default_args(user, default, now),
            opt(held),
            *listed(others),
            *self._ledger_args(now, model, cost, call_id, usage),
        )
        self._check_ledger_written(reply)
        return written(user, reply, cost)

    def reserve(
        self,
        user: str,
        call_id: str,
        amount: float,
        ttl: float,
        mode: Mode = "strict",
        default: NewBudget | None = None,
        at_least: float | None = None,
        *,
        model: str | None = None,
        subjects: Sequence[str] = (),
    ) -> UserRecord:
        amount, ttl = budget.check_reservation(user, call_id, amount, ttl, mode, at_least)
        if model is not None:
            budget.check_model_name(model)
        others = check_subjects_once(subjects)
        now = self.clock()
        reply = self._run(
            "reserve",
            now,
            user,
            call_id,
            amount,
            ttl,
            mode,
            *default_args(user, default, now),
            opt(at_least),
            opt(model),
            *listed(others),
        )
        if reply[0] == "over":
            raise refusal(reply, amount)
        return written(user, reply)

    def settle(
        self, call_id: str, actual_cost: float, model: str, user: str | None = None, *, usage: Usage | None = None
    ) -> bool:
        budget.check_call_id(call_id)
        cost = budget.check_amount("actual cost", actual_cost)
        budget.check_model_name(model)
        if user is not None:
            budget.check_user(user)
        usage = ledger.check_usage(usage)
        now = self.clock()
        reply = self._run(
            "settle", now, call_id, cost, model, opt(user), *self._ledger_args(now, model, cost, call_id, usage)
        )
        if reply[0] == "too_large":
            raise budget.too_large(cost)
        self._check_ledger_written(reply)
        return bool(reply[1])

    def release(self, call_id: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        if user is not None:
            budget.check_user(user)
        return bool(self._run("release", self.clock(), call_id, opt(user))[1])

    # -- the ledger --------------------------------------------------------------------------

    def ledger(self, since: float | None = None, until: float | None = None) -> Iterator[LedgerEntry]:
        """The charges recorded from ``since`` (included) to ``until`` (excluded), as far back as
        the stream keeps them, in stream order (by time, but for clocks that disagree).

        An entry that does not decode is skipped with a warning. Read in pages of
        ``_redis_ledger.LEDGER_PAGE``: each page is one command, so entries added meanwhile may
        be listed.

        :raises StoreUnavailableError: Redis cannot be reached (also while iterating).
        :raises StoreError: Redis failed (the ledger's key is not a stream, say).
        """
        start, end = ledger.check_period(since, until)
        if not self.keeps_ledger:
            return iter(())
        now = self.clock()  # all that is kept is read: another client may keep entries longer
        if start >= end:
            return iter(())
        with self._translated():
            seconds, micros = self._connection().time()  # stream ids are the server's times
        return _redis_ledger.read(self._ledger_page, start, end, str(self), seconds + micros / 1e6 - now)

    def _ledger_args(
        self, now: float, model: str, cost: float, call_id: str | None, usage: Usage | None
    ) -> list[str | int]:
        if not self.keeps_ledger:
            return [""]
        return _redis_ledger.entry_args(
            now, model, cost, call_id, usage, self.ledger_retention_days, self.ledger_max_entries
        )

    def _check_ledger_written(self, reply: list[Any]) -> None:
        """Log a charge written whose ledger entry could not be (as the file store does)."""
        why = _redis_ledger.failure(reply)
        if why is not None:
            logger.error("%s: a charge was written but not its ledger entry: %s", self, why)

    def _ledger_page(self, low: str, high: str, count: int) -> list[Any]:
        """XRANGE of the ledger, as bytes: an entry that is not UTF-8 fails alone, not the page."""
        key, raw = f"{self.prefix}ledger", {self._redis.client.NEVER_DECODE: True}
        with self._translated():
            page = self._connection().execute_command("XRANGE", key, low, high, "COUNT", count, **raw)
        return cast(list[Any], page)

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

    def _connection(self) -> Any:
        """This process's client (forked: the parent's sockets are not ours to use)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._connect()
        return self._client

    def _args(self, op: str, now: float, *args: str | float | int) -> list[str | float | int]:
        periods = self._periods.args(now)
        return [self.prefix, op, now, budget.APPLIED_ID_TTL_SECONDS, budget.APPLIED_ID_LIMIT, *periods, *args]

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """redis-py's errors as ours."""
        errors = self._redis.exceptions
        try:
            yield
        except (errors.ConnectionError, errors.TimeoutError, errors.ReadOnlyError, OSError) as exc:
            raise StoreUnavailableError(f"Redis at {self.safe_url} cannot be reached: {exc}") from exc
        except errors.RedisError as exc:
            raise StoreError(f"Redis at {self.safe_url} failed: {exc}") from exc
        except UnicodeError as exc:  # a lone surrogate in a user id or model name
            raise ConfigurationError(f"cannot send to Redis: {exc}") from exc

    def _run(self, op: str, now: float, *args: str | float | int) -> list[Any]:
        """Run one operation of the script, again if it needs calendar periods it was not given."""
        while True:
            connection = self._connection()
            with self._translated():
                raw = self._script(args=self._args(op, now, *args), client=connection)
            try:
                reply = cast(list[Any], json.loads(raw))
            except (TypeError, ValueError) as exc:
                raise StoreCorruptError(f"Redis at {self.safe_url} sent {raw!r}: {exc}") from exc
            if reply[0] == "corrupt":  # the script wrote nothing
                raise StoreCorruptError(
                    f"the Redis record of user {reply[1]!r} is not what this store writes: {reply[2]}"
                )
            if reply[0] != "bounds":
                return reply
            if not self._periods.learn(reply[1]):
                raise StoreError(f"Redis at {self.safe_url}: the script asked again for periods it was given")


# The script, in the order it runs: its records, the ledger, then its arithmetic and operations.
LUA_FILES = ("redis_records.lua", "redis_ledger.lua", "redis_budget.lua")


@cache
def _lua_source() -> str:
    folder = resources.files(__package__)
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in LUA_FILES)


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
