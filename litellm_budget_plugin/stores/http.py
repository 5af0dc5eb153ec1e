"""A store on a budget server (``litellm-budget serve``), over its atomic ``/v1/<op>`` endpoints.

Each method is one request, so many app servers sharing one budget server lose no update.
A call held or charged against several budgets (``subjects=``: its team, tags, the global
budget) is one request too, applied by the server's store in one atomic step.
Time is the server's: windows and reservation leases follow the server's clock.

Failures map onto the package's errors: a server that cannot be reached or that times out
raises :class:`StoreUnavailableError` naming the URL (the httpx error is its cause); the
server's 4xx answers raise the error it reports (:class:`ConfigurationError`,
:class:`UnknownUserError`, :class:`BudgetExceededError`).

Retries: a request that never reached the server (connection refused) is retried for every
method. A request that may have been applied (a timeout after sending, a dropped connection,
a busy store) is retried only when repeating it cannot apply it twice: reads, ``set_budget``,
``roll``, and ``charge``/``reserve``/``settle``/``release``, which carry a call id (``charge``
without one gets a generated id for that reason). ``put``, ``set_fields``, ``delete`` and ``reset`` are not.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx

from .. import budget
from ..budget import Mode, UserRecord
from ..errors import (
    ConfigurationError,
    StoreCorruptError,
    StoreLockTimeout,
    StoreUnavailableError,
    UnknownUserError,
    over_budget,
)
from ..ledger import LedgerEntry, LedgerTotal, Usage, check_period, check_usage, decode_any, decode_many, usage_to_json
from ..subjects import check_subject, check_subjects_once
from ._at_once import WritesAtOnce
from .base import NewBudget

T = TypeVar("T")
API_KEY_ENV = "LITELLM_BUDGET_API_KEY"
DEFAULT_PROJECT = "default"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
_BACKOFF = 0.05  # seconds before the first retry, doubling

# Methods that give the same result when repeated after a request that may have been applied.
_IDEMPOTENT = frozenset({"get", "all", "set_budget", "roll", "charge", "reserve", "settle", "release"})


class HttpStore(WritesAtOnce):
    """The :class:`BudgetStore` of one project on a budget server.

    :param api_base: the server's URL, e.g. ``http://127.0.0.1:8000`` (a path prefix is kept).
    :param project_name: the project; each has its own budgets on the server.
    :param headers: extra headers on every request (LiteLLM's ``headers=``).
    :param api_key: sent as ``Authorization: Bearer``; default ``$LITELLM_BUDGET_API_KEY``
        unless ``headers`` already carry an Authorization header.
    :param timeout: seconds for connecting, and for each read or write.
    :param retries: further attempts after a failed one (see the module's docstring).
    """

    def __init__(
        self,
        api_base: str,
        project_name: str = DEFAULT_PROJECT,
        *,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        try:
            url = httpx.URL(api_base)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigurationError(f"invalid budget server URL {api_base!r}: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(f"budget server URL must be http(s)://host[:port], got {api_base!r}")
        if not isinstance(project_name, str) or not project_name:
            raise ConfigurationError("project_name must be a non-empty string")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be a non-negative integer, got {retries!r}")
        self.api_base = str(api_base).rstrip("/")
        self.project_name = project_name
        self.timeout = budget.check_amount("timeout", timeout)
        self.retries = retries
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if not any(name.lower() == "authorization" for name in self._headers):
            key = api_key or os.environ.get(API_KEY_ENV)
            if key:
                self._headers["Authorization"] = f"Bearer {key}"
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"HttpStore({self.api_base!r}, project_name={self.project_name!r})"

    # -- BudgetStore ---------------------------------------------------------------------

    def get(self, user: str) -> UserRecord | None:
        budget.check_user(user)
        return cast(UserRecord | None, self._call("get", user=user))

    def all(self) -> dict[str, UserRecord]:
        return cast(dict[str, UserRecord], self._call("all"))

    def set_budget(
        self,
        user: str,
        total_budget: float | None,
        duration: float | str | None = None,
        created_at: float | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> UserRecord:
        check_subject(user)
        budget.new_record(total_budget, duration, 0.0, created_at)  # validate before sending
        # fields only when given: a server older than them refuses the field
        extra = {} if fields is None else {"fields": budget.check_fields(user, fields)}
        return self._record(
            "set_budget", user=user, total_budget=total_budget, duration=duration, created_at=created_at, **extra
        )

    def put(self, user: str, record: UserRecord) -> None:
        check_subject(user)
        self._call("put", user=user, record=budget.check_record(user, record))

    def set_fields(self, user: str, fields: Mapping[str, object]) -> UserRecord:
        budget.check_user(user)
        return self._record("set_fields", user=user, fields=budget.check_fields(user, fields))

    def delete(self, user: str) -> bool:
        budget.check_user(user)
        return bool(self._call("delete", user=user))

    def reset(self, user: str) -> UserRecord:
        budget.check_user(user)
        return self._record("reset", user=user)

    def roll(self, user: str) -> UserRecord:
        budget.check_user(user)
        return self._record("roll", user=user)

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
        budget.check_amount("cost", cost)
        # A charge is retried after a timeout; its id makes sure it is applied once.
        call_id = f"http-charge-{uuid.uuid4().hex}" if call_id is None else budget.check_call_id(call_id)
        # held and subjects are sent only when given, so that a server older than them still
        # takes other charges.
        extra = _given(
            held=None if held is None else budget.check_amount("held amount", held), subjects=subjects, usage=usage
        )
        return self._record("charge", user=user, cost=cost, model=model, call_id=call_id, default=default, **extra)

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
        budget.check_reservation(user, call_id, amount, ttl, mode, at_least)
        if model is not None:
            budget.check_model_name(model)
        # at_least, model and subjects only when given: a server older than them refuses them
        extra = _given(at_least=at_least, model=model, subjects=subjects)
        return self._record(
            "reserve", user=user, call_id=call_id, amount=amount, ttl=ttl, mode=mode, default=default, **extra
        )

    def settle(
        self, call_id: str, actual_cost: float, model: str, user: str | None = None, *, usage: Usage | None = None
    ) -> bool:
        budget.check_call_id(call_id)
        budget.check_amount("actual cost", actual_cost)
        extra = _given(usage=usage)
        return bool(self._call("settle", call_id=call_id, actual_cost=actual_cost, model=model, user=user, **extra))

    def ledger(self, since: float | None = None, until: float | None = None) -> Iterator[LedgerEntry]:
        """The server's ledger of the project, streamed (``/v1/ledger``: one entry a line, then
        a line ``{"end": <count>}``; a stream cut before it raises StoreUnavailableError)."""
        return self._ledger(*check_period(since, until), False, _entries)  # a bad period is refused now

    def ledger_totals(
        self, since: float | None = None, until: float | None = None
    ) -> Iterator[LedgerEntry | LedgerTotal]:
        """:meth:`ledger`, with the days that are over as their totals where the server's store
        keeps them (a file store's day totals): far fewer lines for a report."""
        return self._ledger(*check_period(since, until), True, _entries_and_totals)

    def _ledger(
        self, start: float, end: float, totals: bool, decode: Callable[[list[bytes], str], list[T]]
    ) -> Iterator[T]:
        url = f"{self.api_base}/v1/ledger"
        body = {"project_name": self.project_name, "since": start, "until": end, **({"totals": True} if totals else {})}
        try:
            with self._http().stream(
                "POST", url, json=body, timeout=httpx.Timeout(self.timeout, read=max(self.timeout, LEDGER_READ_TIMEOUT))
            ) as response:
                if response.status_code != 200:
                    response.read()
                    _result(response, url)  # raises the error the server reports
                yield from _streamed(response.iter_lines(), url, decode)
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(
                f"budget server {url}: ledger not read whole: {type(exc).__name__}: {exc}"
            ) from exc

    def release(self, call_id: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        return bool(self._call("release", call_id=call_id, user=user))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()

    # -- requests ------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._pid != os.getpid():
                # Forked: the connections belong to the parent; leave them to it.
                self._client, self._pid = None, os.getpid()
            if self._client is None:
                self._client = httpx.Client(headers=self._headers, timeout=self.timeout)
            return self._client

    def _record(self, op: str, **args: Any) -> UserRecord:
        return cast(UserRecord, self._call(op, **args))

    def _call(self, op: str, **args: Any) -> Any:
        url = f"{self.api_base}/v1/{op}"
        try:
            body = json.dumps({"project_name": self.project_name, **args}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"cannot send {op} to the budget server: {exc}") from exc
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(_BACKOFF * 2 ** (attempt - 1))
            last = attempt == self.retries
            try:
                response = self._http().post(url, content=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if last:  # never sent: a retry cannot apply it twice
                    raise StoreUnavailableError(f"cannot reach budget server {url}: {exc}") from exc
                continue
            except httpx.TransportError as exc:
                if last or op not in _IDEMPOTENT:
                    raise StoreUnavailableError(
                        f"budget server {url} did not answer: {type(exc).__name__}: {exc}"
                    ) from exc
                continue
            if response.status_code == 503 and not last and op in _IDEMPOTENT:
                continue
            return _result(response, url)
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _given(*, subjects: Sequence[str] = (), usage: Usage | None = None, **args: object) -> dict[str, object]:
    """The optional arguments of a request that were given (checked ``subjects`` as a list)."""
    given = {name: value for name, value in args.items() if value is not None}
    if subjects:
        given["subjects"] = list(check_subjects_once(subjects))
    if usage is not None:
        given["usage"] = usage_to_json(check_usage(usage) or usage)
    return given


# Seconds a ledger stream may go without a byte: the server sends a page of entries at a time.
LEDGER_READ_TIMEOUT = 60.0


def _streamed(lines: Iterator[str], url: str, decode: Callable[[list[bytes], str], list[T]]) -> Iterator[T]:
    """What a ``/v1/ledger`` answer holds, decoded a batch at a time; it ends with ``{"end": <count>}``."""
    count = 0
    batch: list[bytes] = []
    for line in lines:
        if not line.startswith("{"):
            batch.append(line.encode())
            if len(batch) < 10_000:
                continue
        yield from decode(batch, url)
        count, batch = count + len(batch), []
        if line.startswith("{"):
            try:
                end = json.loads(line)["end"]
            except (ValueError, TypeError, KeyError):
                raise StoreUnavailableError(f"budget server {url}: malformed end of ledger {line[:80]!r}") from None
            if end != count:
                raise StoreUnavailableError(f"budget server {url}: ledger stream ended after {count} of {end} entries")
            return
    raise StoreUnavailableError(f"budget server {url}: ledger stream cut after {count + len(batch)} entries")


def _entries(lines: list[bytes], url: str) -> list[LedgerEntry]:
    items, bad = decode_many(lines)
    if bad:
        raise StoreUnavailableError(f"budget server {url} sent {bad} malformed ledger line(s)")
    return items


def _entries_and_totals(lines: list[bytes], url: str) -> list[LedgerEntry | LedgerTotal]:
    items = decode_any(lines)
    if items is None:
        raise StoreUnavailableError(f"budget server {url} sent a malformed ledger line")
    return items


def _result(response: httpx.Response, url: str) -> Any:
    """The ``result`` of a success answer, or the package error the server reports."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise StoreUnavailableError(
            f"budget server {url} answered {response.status_code} without a JSON object: {response.text[:200]!r}"
        )
    status = response.status_code
    if status == 200 and answer.get("status") == "success":
        return answer.get("result")
    code, message = answer.get("error"), str(answer.get("message", ""))
    if code == "budget_exceeded":
        try:
            raise over_budget(
                str(answer.get("subject", answer["user"])),  # a server older than subjects sends user
                float(answer["spend"]),
                float(answer["budget"]),
                float(answer["estimate"]),
                float(answer.get("reserved", 0.0)),
                window=str(answer.get("window", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise StoreUnavailableError(f"budget server {url}: malformed over-budget answer") from None
    if code == "unknown_user":
        raise UnknownUserError(str(answer.get("user", "")))
    if status == 401:
        raise ConfigurationError(f"budget server {url} refused the API key: {message}")
    if code == "store_corrupt":
        raise StoreCorruptError(f"budget server {url}: {message}")
    if code == "store_busy":
        raise StoreLockTimeout(f"budget server {url}: {message}")
    if 400 <= status < 500:
        if code == "not_found":
            message = f"no such endpoint: is {url} a litellm-budget server? ({message})"
        raise ConfigurationError(message or f"budget server {url} answered {status}")
    raise StoreUnavailableError(f"budget server {url} answered {status}: {message}")
