"""``GET /dashboard`` on the budget server: the route, its headers, and who may see what.

A browser cannot send a Bearer header, so this path also takes HTTP Basic credentials (any user
name, the API key as password), and answers a missing or wrong key with a 401 that makes a
browser ask for them. Which projects a request may see is :func:`visible_projects`'s answer,
the one place to narrow it (per-key grants).

Query: ``project`` (default: the first visible one), ``refresh`` (seconds between reloads,
1-3600, default 30). The page is rendered in a worker thread (a store read, the ledger of the
days not cached, and the HTML).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiohttp import web

from . import _server_access as access
from . import dashboard
from .errors import ConfigurationError
from .stores.projects import ProjectStores

PATH = access.DASHBOARD_PATH
_MAX_REFRESH = 3600

InThread = Callable[[Callable[[], Any]], Awaitable[Any]]


def visible_projects(request: web.Request, all_projects: Iterable[str]) -> list[str]:
    """The projects of ``all_projects`` the request's key may read, in order."""
    return access.projects_for(request).visible(all_projects)


def unauthorized() -> web.Response:
    """401 with a Basic challenge, so a browser asks for the key."""
    return web.Response(
        status=401,
        text="The dashboard needs the server's API key: any user name, the key as password.\n",
        headers={"WWW-Authenticate": f'Basic realm="{access.REALM}", charset="UTF-8"', "Cache-Control": "no-store"},
    )


def _refresh(value: str | None) -> int:
    if value is None:
        return dashboard.DEFAULT_REFRESH_SECONDS
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= _MAX_REFRESH:  # isdigit() takes "²"
        raise ConfigurationError(f"refresh must be a whole number of seconds from 1 to {_MAX_REFRESH}")
    return int(value)


# The page has no script: nothing may run, nothing is fetched (inline styles; the favicon is data:).
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def handler(stores: ProjectStores, in_thread: InThread) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The route's handler; ``in_thread`` runs a function in the server's worker threads."""
    daily = dashboard.DailySpend()

    async def show(request: web.Request) -> web.Response:
        refresh = _refresh(request.query.get("refresh"))
        wanted = request.query.get("project")
        if wanted is not None:
            access.checked_project(request, wanted, write=False)  # 403 for a project the key may not read
        projects: Sequence[str] = visible_projects(request, await in_thread(stores.names))
        if wanted is not None and wanted not in projects:
            projects = sorted({*projects, wanted})  # not listed: a Redis URL lists those served so far
        project = wanted if wanted is not None else (projects[0] if projects else None)

        def render() -> str:
            store = None if project is None else stores.get(project, create=False)
            return dashboard.render(project, projects, store, daily, refresh=refresh)

        page: str = await in_thread(render)
        response = web.Response(text=page, content_type="text/html", charset="utf-8", headers=HEADERS)
        response.enable_compression()  # 10,000 subjects are megabytes of HTML, gzip a tenth of it
        return response

    return show
