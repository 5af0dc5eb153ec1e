"""The ``litellm-budget`` command: set, show, reset and import budgets, and serve them."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from . import budget
from .errors import BudgetPluginError, ConfigurationError, UnknownUserError
from .stores import DEFAULT_STORE, STORE_ENV, BudgetStore, FileStore, store_from_url

EXIT_OK = 0
EXIT_ERROR = 1  # the store could not be read or written, the server not reached, the port not bound
EXIT_USAGE = 2  # bad arguments or configuration (click's own usage errors exit 2 too)
EXIT_UNKNOWN_USER = 3  # the user has no budget

PROJECT_ENV = "LITELLM_BUDGET_PROJECT"
API_KEY_ENV = "LITELLM_BUDGET_API_KEY"

EPILOG = f"""\b
The store is --store (a JSON file path, file://, http(s)://, redis://),
else ${STORE_ENV}, else ./{DEFAULT_STORE}.

\b
Exit codes:
  {EXIT_OK}  success
  {EXIT_ERROR}  store or server error (unreadable file, server unreachable, ...)
  {EXIT_USAGE}  usage or configuration error (bad amount, duration, file, URL)
  {EXIT_UNKNOWN_USER}  unknown user (no budget)
"""

P = ParamSpec("P")
R = TypeVar("R")


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _exit_codes(fn: Callable[P, R]) -> Callable[P, R]:
    """Map the package's errors onto the documented exit codes."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UnknownUserError as exc:
            _fail(EXIT_UNKNOWN_USER, f"{exc}; give it one with: litellm-budget set {exc.user} AMOUNT")
        except ConfigurationError as exc:
            _fail(EXIT_USAGE, str(exc))
        except (BudgetPluginError, OSError) as exc:
            _fail(EXIT_ERROR, str(exc))

    return run


def _store_options(fn: Callable[P, R]) -> Callable[..., R]:
    fn = click.option(
        "--api-key",
        envvar=API_KEY_ENV,
        help=f"API key of a budget server (http:// stores) [env: {API_KEY_ENV}].",
    )(fn)
    fn = click.option(
        "--project",
        envvar=PROJECT_ENV,
        default="default",
        show_default=True,
        help=f"Project on a budget server or Redis; a file holds one project [env: {PROJECT_ENV}].",
    )(fn)
    return click.option(
        "--store",
        envvar=STORE_ENV,
        metavar="PATH|URL",
        help=f"Budget store: a JSON file, or a URL [env: {STORE_ENV}; default ./{DEFAULT_STORE}].",
    )(fn)


def open_store(store: str | None, project: str, api_key: str | None) -> BudgetStore:
    """The store named on the command line (paths take no project; URLs do)."""
    target = store or os.environ.get(STORE_ENV) or DEFAULT_STORE
    scheme, sep, _ = target.partition("://")
    scheme = scheme.lower()
    if not sep or scheme == "file":
        return store_from_url(target)
    if scheme in ("http", "https"):
        return store_from_url(target, project=project, api_key=api_key)
    return store_from_url(target, project=project)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="litellm_budget_plugin")
def main() -> None:
    """Per-user budgets for litellm: set, show, reset, import, and serve them."""


# A negative AMOUNT ("-5") is an argument, so that its own error shows, not "No such option".
@main.command(name="set", epilog=EPILOG, context_settings={"ignore_unknown_options": True})
@click.argument("user")
@click.argument("amount")
@click.option(
    "--duration",
    metavar="DURATION",
    help='Budget window: daily, weekly, monthly, yearly, or "1h", "30d", "1mo"... (default: never resets).',
)
@_store_options
@_exit_codes
def set_command(
    user: str, amount: str, duration: str | None, store: str | None, project: str, api_key: str | None
) -> None:
    """Give USER a budget of AMOUNT dollars (a known user keeps what it has spent)."""
    total = _amount(amount)
    target = open_store(store, project, api_key)
    try:
        record = target.set_budget(user, total, duration)
    finally:
        target.close()
    window = "" if duration is None else f" {_window(duration)}"
    click.echo(f"{user}: budget {_money(record['total_budget'])}{window}, spent {_money(record['current_cost'])}")


@main.command(epilog=EPILOG)
@click.argument("user", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {user: record with next_reset}.")
@_store_options
@_exit_codes
def show(user: str | None, as_json: bool, store: str | None, project: str, api_key: str | None) -> None:
    """Show every user's spend and budget, or USER's.

    An OVERRUNS column, shown once some user has any, counts the calls that cost more than
    the guard held for them, and by how much in all (kept across windows and resets).
    """
    target = open_store(store, project, api_key)
    try:
        if user is None:
            records = target.all()
        else:
            record = target.get(budget.check_user(user))
            if record is None:
                raise UnknownUserError(user)
            records = {user: record}
    finally:
        target.close()
    now = time.time()
    if as_json:
        out = {u: {**budget.litellm_view(r), "next_reset": budget.next_reset(r, now)} for u, r in records.items()}
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    if not records:
        other = "" if isinstance(target, FileStore) else " (--project NAME shows another project)"
        click.echo(f"no budgets in {target!r}{other}")
        return
    overruns = any(record.get("overruns") for record in records.values())
    rows = [("USER", "SPENT", "BUDGET", "USED", "NEXT RESET") + (("OVERRUNS",) if overruns else ())]
    for name, record in sorted(records.items()):
        rows.append(
            (
                name,
                _money(record["current_cost"]),
                _money(record["total_budget"]),
                _used(record),
                _time(budget.next_reset(record, now)),
            )
            + ((_overruns(record),) if overruns else ())
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


@main.command(epilog=EPILOG)
@click.argument("user")
@_store_options
@_exit_codes
def reset(user: str, store: str | None, project: str, api_key: str | None) -> None:
    """Set USER's spend back to zero, keeping the budget."""
    target = open_store(store, project, api_key)
    try:
        record = target.reset(user)
    finally:
        target.close()
    click.echo(f"{user}: spend reset to {_money(0.0)} of {_money(record['total_budget'])}")


@main.command(name="import", epilog=EPILOG)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@_store_options
@_exit_codes
def import_command(file: str, store: str | None, project: str, api_key: str | None) -> None:
    """Copy the users of a LiteLLM user_cost.json FILE into the store (replacing same-named users).

    Every record is checked first (the ranges in the README's "Limits"): if one is invalid,
    nothing is imported. Then each user is written in turn.
    """
    try:
        with open(file, encoding="utf-8") as source:
            raw: Any = json.load(source)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigurationError(f"{file} is not a JSON file we can read: {exc}; nothing was imported") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{file} must hold an object of users, not {type(raw).__name__}")
    records = {}
    for name, record in raw.items():
        try:
            records[budget.check_user(name)] = budget.check_record(name, record)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{file}: {exc}; nothing was imported") from exc
    target = open_store(store, project, api_key)
    try:
        for name, record in records.items():
            target.put(name, record)
    finally:
        target.close()
    click.echo(f"imported {len(records)} user(s) from {file}")


@main.command(epilog=EPILOG)
@click.option(
    "--store",
    envvar=STORE_ENV,
    required=True,
    metavar="DIR|FILE|URL",
    help="A directory (one <project>.json per project), one .json file (with --project), "
    f"or a redis:// URL [env: {STORE_ENV}].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option(
    "--api-key",
    envvar=API_KEY_ENV,
    help=f"Require 'Authorization: Bearer KEY' [env: {API_KEY_ENV}]; without it, loopback only.",
)
@click.option("--project", default=None, help="Serve only this project (needed when --store is one file).")
@click.option("--max-body", type=click.IntRange(1024), default=None, help="Largest request body, bytes.")
@_exit_codes
def serve(store: str, host: str, port: int, api_key: str | None, project: str | None, max_body: int | None) -> None:
    """Run the budget server (LiteLLM's hosted BudgetManager protocol, and atomic operations).

    Stops on SIGINT or SIGTERM after finishing the requests in flight.
    """
    from . import server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if api_key is not None and not api_key.strip():
        raise ConfigurationError("the API key must not be empty")
    stores = server.ProjectStores.from_target(store, project=project)
    options: dict[str, Any] = {} if max_body is None else {"max_body": max_body}
    server.run(stores, host=host, port=port, api_key=api_key, announce=click.echo, **options)


# --- formatting -------------------------------------------------------------------------


def _money(amount: float | None) -> str:
    if amount is None:
        return "unlimited"
    if amount == round(amount, 2):
        return f"${amount:,.2f}"
    return f"${amount:,.6f}".rstrip("0")


def _window(duration: str) -> str:
    """A window as the user wrote it ("daily", "per 1h"): the store keeps days, 0.0416667 of them."""
    text = duration.strip()
    return text if text in budget.NAMED_DURATIONS_DAYS else f"per {text}"


def _amount(text: str) -> float:
    """AMOUNT as written: ``10`` stays the whole number 10 in the store, as LiteLLM writes it."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(f"AMOUNT must be a number of dollars, got {text!r}") from None


def _used(record: budget.UserRecord) -> str:
    limit = record["total_budget"]
    if limit is None:
        return "-"
    if limit == 0:
        return "100.0%" if record["current_cost"] > 0 else "0.0%"
    return f"{100 * record['current_cost'] / limit:.1f}%"


def _overruns(record: budget.UserRecord) -> str:
    count = record.get("overruns", 0)
    return f"{count} (+{_money(record.get('overrun_cost', 0.0))})" if count else "-"


def _time(when: float | None) -> str:
    if when is None:
        return "never"
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    main()
