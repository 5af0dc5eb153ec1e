"""The budget server: LiteLLM's hosted-budget protocol, and atomic operations, over any store.

Every request is a ``POST`` of a JSON object naming its ``project_name``; each project has
its own store (:class:`~litellm_budget_plugin.stores.projects.ProjectStores`). Answers are
JSON objects with ``"status"`` ``"success"`` or ``"error"``.

LiteLLM's protocol, for ``litellm.BudgetManager(project, client_type="hosted", api_base=URL)``:

- ``/get_budget`` ``{"project_name"}`` -> ``{"status": "success", "data": {user: record}}``, or
  ``{"status": "error", ...}`` (still HTTP 200) for a project with no users, which LiteLLM's
  client reads as empty.
- ``/set_budget`` ``{"project_name", "user_dict"}`` -> ``{"status": "success"}``. The whole
  dict replaces the project's users: last writer wins, and users missing from it are deleted.

Atomic operations, one store call each (:class:`~litellm_budget_plugin.stores.http.HttpStore`
is their client): ``/v1/<op>`` with the arguments of the :class:`BudgetStore` method of that
name, answered by ``{"status": "success", "result": ...}``. Budgets beyond the user's travel as
those methods take them: ``subjects`` (a list of keys such as ``"team:red"``, ``"tag:search"``)
on ``reserve`` and ``charge``, ``model`` on ``reserve``, ``fields`` (``team``, ``timezone``,
``windows``...) on ``set_budget`` and ``set_fields``; each operation changes all the records it
names in one atomic step of the project's store. Errors: 400 invalid request,
401 missing or wrong API key, 402 over budget (with ``subject``, the budget that refused, also
as ``user``; ``window``, which of its windows; ``spend``, ``budget``, ``estimate``,
``reserved``), 403 the key may not use or change the named project (with ``project``; the
same answer whether the project exists or not) or ``cross_site`` (a browser sent it from
another site's page: :func:`._server_access.cross_site`), 404 unknown user or path, 408 body not sent
within ``read_timeout``, 413 request too large, 503 store unavailable or busy, 500 store corrupt
(a store file or record the store refuses, such as a link: logged). Anything a client sends
is checked (limits.py) before a store is touched: a refused request changes nothing.
``/v1/ledger`` ``{"project_name", "since"?, "until"?}`` streams the project's ledger
(:mod:`.ledger`): one entry a line (``application/x-ndjson``), then ``{"end": <count>}``.
``GET /health`` needs no key. Keys (``--api-key``, or ``--keys FILE`` with projects and access
per key) and what each may do: :mod:`._server_access`. ``GET /metrics``
(``make_app(metrics=True)``) is Prometheus' text format (:mod:`.metrics`), with the same key;
it shows the projects the key may read.
``GET /dashboard`` is a web page of a project's budgets (:mod:`.dashboard`); it also takes
the key as HTTP Basic credentials, which browsers send.

Store calls are synchronous; they run in worker threads, and a write that has started is
finished (and waited for at shutdown) even if its request is cancelled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import Any, TypeVar

from aiohttp import web

from . import _server_access as access
from . import _server_dashboard, budget, ledger, reports, subjects
from ._server_observe import observed
from ._server_requests import OPS, Op, check_fields, check_object
from .errors import (
    BudgetRefusal,
    ConfigurationError,
    StoreCorruptError,
    StoreError,
    StoreLockTimeout,
    UnknownUserError,
)
from .metrics import BudgetMetrics
from .observe import BudgetObserver, Observers
from .stores.projects import ProjectStores, check_project_name

T = TypeVar("T")
logger = logging.getLogger(__name__)

API_KEY_ENV = "LITELLM_BUDGET_API_KEY"
MAX_BODY_BYTES = 8 * 1024 * 1024  # LiteLLM's /set_budget sends every user of the project at once
SHUTDOWN_TIMEOUT = 30.0
_LEDGER_PAGE = 10_000  # ledger entries read and sent at a time
READ_TIMEOUT = 30.0  # seconds for a client to send its whole body: a slow one gets 408

__all__ = ["API_KEY_ENV", "MAX_BODY_BYTES", "READ_TIMEOUT", "ProjectStores", "check_project_name", "make_app", "run"]


def _reject_constant(name: str) -> float:
    raise ConfigurationError(f"{name} is not a number JSON allows")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ConfigurationError(f"number {text[:40]} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 40:
        raise ConfigurationError(f"integer {text[:40]}... is out of range")
    return int(text)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(request.read(), request.app[_READ_TIMEOUT])  # 413 past client_max_size
    except TimeoutError:
        logger.warning("%s: the client sent no whole body within %s s", request.path, request.app[_READ_TIMEOUT])
        raise web.HTTPRequestTimeout(reason="request body not received in time") from None
    try:
        body = json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise ConfigurationError(f"the body must be a JSON object, got {type(body).__name__}")
    return body


# --- the application --------------------------------------------------------------------

_STORES = web.AppKey("stores", ProjectStores)
_READ_TIMEOUT = web.AppKey("read_timeout", float)
_INFLIGHT = web.AppKey("inflight", set[asyncio.Future[Any]])
_OBSERVERS = web.AppKey("observers", Observers)  # told of charges and refusals (alerts, metrics)
_METRICS = web.AppKey("metrics", BudgetMetrics)


def _dumps(data: object) -> str:
    return json.dumps(data, allow_nan=False, separators=(",", ":"))


def _ok(**data: object) -> web.Response:
    return web.json_response({"status": "success", **data}, dumps=_dumps)


def _error(status: int, code: str, message: str, **extra: object) -> web.Response:
    payload = {"status": "error", "error": code, "message": message, **extra}
    headers = {"WWW-Authenticate": f'Bearer realm="{access.REALM}"'} if status == 401 else None
    return web.json_response(payload, status=status, headers=headers, dumps=_dumps)


async def _in_thread(app: web.Application, fn: Callable[[], T]) -> T:
    """Run a store call in a worker thread; it finishes even if the request is cancelled."""
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    inflight = app[_INFLIGHT]
    inflight.add(future)

    def done(finished: asyncio.Future[Any]) -> None:
        inflight.discard(finished)
        if not finished.cancelled():
            finished.exception()  # retrieved: a request that went away is not an unhandled error

    future.add_done_callback(done)
    return await asyncio.shield(future)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, then turn every failure into a JSON answer; nothing escapes."""
    try:
        if request.method not in ("GET", "HEAD") and access.cross_site(request):
            return _error(403, "cross_site", "a page of another site may not send requests here")
        if request.path != "/health" and not access.authenticate(request):
            if request.path in access.BROWSER_PAGES:
                return _server_dashboard.unauthorized()
            return _error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
        return await handler(request)
    except access.AccessDenied as exc:
        return _error(403, "forbidden", str(exc), project=exc.project)
    except BudgetRefusal as exc:
        return _error(
            402,
            "budget_exceeded",
            str(exc),
            subject=exc.subject,
            user=exc.user,
            window=exc.window,
            spend=exc.spend,
            budget=exc.budget,
            estimate=exc.estimate,
            reserved=exc.reserved,
        )
    except UnknownUserError as exc:
        return _error(404, "unknown_user", str(exc), user=exc.user)
    except ConfigurationError as exc:
        return _error(400, "invalid_request", str(exc))
    except StoreCorruptError as exc:
        logger.error("store corrupt: %s", exc)
        return _error(500, "store_corrupt", str(exc))
    except StoreLockTimeout as exc:
        return _error(503, "store_busy", str(exc))
    except StoreError as exc:
        logger.warning("store unavailable: %s", exc)
        return _error(503, "store_unavailable", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large"}
        return _error(exc.status, code.get(exc.status, "http_error"), exc.reason)
    except Exception:
        logger.exception("unexpected error on %s", request.path)
        return _error(500, "internal_error", "unexpected server error; see the server log")


async def _health(request: web.Request) -> web.Response:
    return _ok(stores=request.app[_STORES].description)


async def _get_budget(request: web.Request) -> web.Response:
    """LiteLLM's load: every user of the project in LiteLLM's shape."""
    body = await _body(request)
    project = access.checked_project(request, body.get("project_name"), write=False)
    stores = request.app[_STORES]

    def read() -> dict[str, budget.UserRecord] | None:
        store = stores.get(project, create=False)
        return None if store is None else store.all()

    records = await _in_thread(request.app, read)
    if not records:
        # 200: LiteLLM's client raises on any other status, and reads this answer as "empty".
        return _error(200, "unknown_project", f"project {project!r} has no budgets")
    return _ok(data={user: budget.litellm_view(r) for user, r in records.items()})


async def _set_budget(request: web.Request) -> web.Response:
    """LiteLLM's save: the dict replaces the project's users (last writer wins)."""
    body = await _body(request)
    project = access.checked_project(request, body.get("project_name"), write=True)
    user_dict = check_object("user_dict")(body.get("user_dict"))
    # every key is checked as the store will (a team, a tag, a user) before one is written
    checked = {subjects.check_subject(u): budget.check_record(u, r) for u, r in user_dict.items()}
    stores = request.app[_STORES]

    def replace() -> None:
        with stores.replace_lock(project):
            store = stores.get(project, create=True)
            assert store is not None
            current = store.all()
            for user, record in checked.items():
                old = current.get(user)
                # Unchanged users are not rewritten: this keeps their holds of calls in
                # flight, and charges made since the sender read them are not undone.
                if old is None or budget.check_record(user, budget.litellm_view(old)) != record:
                    store.put(user, record)
            for user in current.keys() - checked.keys():
                store.delete(user)

    await _in_thread(request.app, replace)
    return _ok()


async def _ledger(request: web.Request) -> web.StreamResponse:
    """The project's ledger from ``since`` to ``until``: one entry a line, then ``{"end": <count>}``
    (a client that misses it knows the stream was cut). Read in pages, so memory stays bounded.
    With ``"totals": true``, the days that are over as their totals where the store keeps them
    (:func:`.reports.charges`)."""
    body = await _body(request)
    project = access.checked_project(request, body.pop("project_name", None), write=False)
    unknown = set(body) - {"since", "until", "totals"}
    if unknown:
        raise ConfigurationError(f"unknown field(s) {', '.join(map(repr, sorted(unknown)))}")
    since, until = ledger.check_period(body.get("since"), body.get("until"))
    totals = body.get("totals", False)
    if not isinstance(totals, bool):
        raise ConfigurationError(f"totals must be true or false, got {totals!r:.40}")
    stores = request.app[_STORES]

    def first_page() -> tuple[Iterator[reports.Charges], list[reports.Charges]]:
        store = stores.get(project, create=False)
        read = iter(()) if store is None else iter(reports.charges(store, since, until, utc_days=totals))
        return read, list(itertools.islice(read, _LEDGER_PAGE))

    entries, page = await _in_thread(request.app, first_page)  # errors before the answer starts
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    count = 0
    while page:
        count += len(page)
        await response.write(("\n".join(map(ledger.encode_any, page)) + "\n").encode())
        page = await _in_thread(request.app, lambda: list(itertools.islice(entries, _LEDGER_PAGE)))
    await response.write(_dumps({"end": count}).encode() + b"\n")
    await response.write_eof()
    return response


def _atomic(name: str, op: Op) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        body = await _body(request)
        project = access.checked_project(request, body.pop("project_name", None), write=access.op_writes(name))
        args = check_fields(op, body)
        stores, observers = request.app[_STORES], request.app[_OBSERVERS]

        def call() -> object:
            store = stores.get(project, create=op.creates(args))
            if store is None:
                return op.missing(args)
            return observed(observers, project, name, args, lambda: op.call(store, args))

        return _ok(result=await _in_thread(request.app, call))

    handle.__name__ = f"handle_{name}"
    return handle


def _visible_projects(request: web.Request) -> Collection[str] | None:
    """The projects whose metrics the request may see: those its key may read (None: every one)."""
    grant = access.projects_for(request)
    return None if grant.every_project else grant.visible(request.app[_STORES].names())


async def _metrics(request: web.Request) -> web.Response:
    metrics, visible = request.app[_METRICS], _visible_projects(request)
    text = await _in_thread(request.app, lambda: metrics.exposition(visible))  # reads the stores
    return web.Response(body=text, headers={"Content-Type": metrics.content_type})


async def _finish(app: web.Application) -> None:
    """On shutdown: wait for store calls already started, let the observers finish what they
    queued (alerts read the stores), then close the stores."""
    inflight = app[_INFLIGHT]
    pending = list(inflight)
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.to_thread(app[_OBSERVERS].close)
    app[_STORES].close()


def make_app(
    stores: ProjectStores,
    *,
    api_key: str | None = None,
    keys: access.Keys | None = None,
    max_body: int = MAX_BODY_BYTES,
    read_timeout: float = READ_TIMEOUT,
    observers: Iterable[BudgetObserver] = (),
    metrics: bool | BudgetMetrics = False,
) -> web.Application:
    """The aiohttp application. ``keys`` (a keys file's) or ``api_key`` (one key for every
    project), not both; neither (or an empty ``api_key``) accepts every request.

    ``observers`` are told of every atomic operation (:mod:`.observe`); ``metrics`` serves
    ``GET /metrics`` (needs the ``[metrics]`` extra): ``True`` makes ``BudgetMetrics(projects=stores)``,
    or pass your own (``max_subjects=``).
    """
    app = web.Application(client_max_size=max_body, middlewares=[_errors])
    app[_STORES] = stores
    app[_READ_TIMEOUT] = budget.check_amount("read_timeout", read_timeout)
    app[access.KEYS] = _keys(api_key, keys)
    inflight: set[asyncio.Future[Any]] = set()
    app[_INFLIGHT] = inflight
    watchers = list(observers)
    if metrics:
        watching = metrics if isinstance(metrics, BudgetMetrics) else BudgetMetrics(projects=stores)
        app[_METRICS] = watching
        watchers.append(watching)
        app.router.add_get("/metrics", _metrics)
    app[_OBSERVERS] = Observers(watchers)
    app.router.add_get("/health", _health)
    app.router.add_post("/get_budget", _get_budget)
    app.router.add_post("/set_budget", _set_budget)
    app.router.add_post("/v1/ledger", _ledger)
    app.router.add_get(_server_dashboard.PATH, _server_dashboard.handler(stores, lambda fn: _in_thread(app, fn)))
    for name, op in OPS.items():
        app.router.add_post(f"/v1/{name}", _atomic(name, op))
    app.on_cleanup.append(_finish)
    return app


def _keys(api_key: str | None, keys: access.Keys | None) -> access.Keys:
    if keys is None:
        return access.Keys.single(api_key)
    if api_key:
        raise ConfigurationError("give a keys file or one API key, not both")
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | access.Keys | None) -> None:
    """Without an API key (or keys file) the server only listens on loopback."""
    keyed = api_key.required if isinstance(api_key, access.Keys) else bool(api_key)
    if not keyed and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host!r} without an API key: set --api-key or ${API_KEY_ENV}, or --keys FILE, "
            "or listen on 127.0.0.1"
        )


def run(
    stores: ProjectStores,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    keys: access.Keys | None = None,
    max_body: int = MAX_BODY_BYTES,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    announce: Callable[[str], None] = print,
    metrics: bool = False,
    observers: Iterable[BudgetObserver] = (),
) -> None:
    """Serve until SIGINT or SIGTERM, then finish requests in flight and close the stores."""
    granted = _keys(api_key, keys)
    check_bind(host, granted)
    asyncio.run(_serve(stores, host, port, granted, max_body, shutdown_timeout, announce, metrics, observers))


async def _serve(
    stores: ProjectStores,
    host: str,
    port: int,
    keys: access.Keys,
    max_body: int,
    shutdown_timeout: float,
    announce: Callable[[str], None],
    metrics: bool = False,
    observers: Iterable[BudgetObserver] = (),
) -> None:
    app = make_app(stores, keys=keys, max_body=max_body, metrics=metrics, observers=observers)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if keys.path is not None:
        loop.add_signal_handler(signal.SIGHUP, access.reload_on_signal, keys, announce)
    try:
        await web.TCPSite(runner, host, port).start()
        for address in runner.addresses:
            ip, bound_port = address[0], address[1]
            shown = f"[{ip}]" if ":" in ip else ip
            announce(f"litellm-budget server listening on http://{shown}:{bound_port}")
        announce(f"store: {stores.description}")
        if keys.required:
            announce(f"requests need the API key (Authorization: Bearer <key>): {keys.source}")
        else:
            announce(f"no API key: listening on loopback only (set --api-key or ${API_KEY_ENV}, or --keys FILE)")
        await stop.wait()
        announce("shutting down: finishing requests in flight")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
