"""The ``litellm-budget`` command: set, show, reset and import budgets, and serve them.

Budgets are for users, teams (``team:<name>``) and tags (``tag:<name>``), each with a main
window and maybe further ones (see :mod:`.windows`); ``show`` prints them with
:mod:`._cli_tables`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from . import _cli_report, _cli_show, _cli_tables, budget, limits, windows
from ._cli_tables import money as _money
from .errors import BudgetPluginError, ConfigurationError, UnknownUserError
from .stores import DEFAULT_STORE, STORE_ENV, BudgetStore, FileStore, store_from_url
from .subjects import check_subject, kind_of

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
    """Budgets for litellm: of users, teams (team:NAME) and tags (tag:NAME); set, show, reset,
    import, and serve them; report spend."""


WINDOW_HELP = """\b
Windows: AMOUNT, --duration and --timezone describe the main window, as given (without
--duration it never resets). --window and --model-cap add further windows, each with its own
spend and reset; a call must fit every window. They are written BUDGET[/DURATION][@ZONE]:
  --window 100/monthly               $100 per 28 days, as LiteLLM counts a month
  --window 100/monthly@Europe/Paris  $100 per calendar month, reset on the 1st in Paris
  --model-cap gpt-4o=1/daily         $1 a day on gpt-4o calls only
Given ones replace USER's windows (one of the same length and model keeps what it spent);
without them the windows are kept, --no-windows drops them. No two windows may have the same
length (for the same model), the main one included. --team and --no-team change USER's team; without
them it is kept.
"""


# A negative AMOUNT ("-5") is an argument, so that its own error shows, not "No such option".
@main.command(name="set", epilog=WINDOW_HELP + "\n" + EPILOG, context_settings={"ignore_unknown_options": True})
@click.argument("user")
@click.argument("amount")
@click.option(
    "--duration",
    metavar="DURATION",
    help='Budget window: daily, weekly, monthly, yearly, or "1h", "30d", "1mo"... (default: never resets).',
)
@click.option(
    "--timezone",
    metavar="ZONE",
    help="Reset the main window on the calendar in this IANA timezone (e.g. Europe/Paris): at local midnight, "
    "on Monday, on the 1st, on January 1st; needs --duration daily, weekly, monthly or yearly.",
)
@click.option("--team", metavar="NAME", help="The team USER belongs to: its calls count against team:NAME too.")
@click.option("--no-team", is_flag=True, help="USER belongs to no team any more.")
@click.option(
    "--window", "window_specs", multiple=True, metavar="BUDGET[/DURATION][@ZONE]", help="A further window; repeatable."
)
@click.option(
    "--model-cap",
    "cap_specs",
    multiple=True,
    metavar="MODEL=BUDGET[/DURATION][@ZONE]",
    help="A further window counting MODEL's calls only; repeatable.",
)
@click.option("--no-windows", is_flag=True, help="Drop USER's further windows and model caps.")
@_store_options
@_exit_codes
def set_command(
    user: str, amount: str, duration: str | None, store: str | None, project: str, api_key: str | None, **given: Any
) -> None:
    """Give USER a budget of AMOUNT dollars (a known one keeps what it has spent).

    USER is a user id, team:NAME or tag:NAME: "set team:red 50 --duration monthly" gives team
    red $50 a month, "set alice 5 --duration daily --team red" puts alice in it.
    """
    total = _amount(amount)
    check_subject(user)
    fields = _fields(duration, **given)  # --timezone, --team, --window...
    budget.check_fields(user, fields)  # every value, before the store is opened
    target = open_store(store, project, api_key)
    try:
        record = target.set_budget(user, total, duration, fields=fields)
    finally:
        target.close()
    click.echo(_describe(user, record, duration))


@main.command(epilog=EPILOG)
@click.argument("user", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {name: record with next_reset}.")
@_store_options
@_exit_codes
def show(user: str | None, as_json: bool, store: str | None, project: str, api_key: str | None) -> None:
    """Show every budget's spend, by kind (users, teams, tags, global), or USER's.

    USER is a user id, team:NAME or tag:NAME. Each budget's further windows follow it
    (+ $100 monthly ...). For a team (show team:red), the users whose record names it follow,
    with their own spend. An OVERRUNS column, shown once a budget has any, counts the calls
    that cost more than the guard held for them, and by how much in all (kept across windows
    and resets). USER's last windows before the current one follow, with what they spent, from
    the store's ledger (which window resets and reset leave alone).
    """
    key = None if user is None else budget.check_user(user)  # a record made before kinds were checked is shown
    target = open_store(store, project, api_key)
    now = time.time()
    try:
        if key is None or kind_of(key) == "team":
            records = target.all()
        else:
            record = target.get(key)
            records = {} if record is None else {key: record}
        history: list[_cli_show.Window] = []
        note = ""
        if key is not None and key in records:
            history, note = _cli_show.closed_windows(target, key, records[key], now)
    finally:
        target.close()
    lines = _cli_show.show(records, key, now, as_json, history, note)
    if not lines:
        other = "" if isinstance(target, FileStore) else " (--project NAME shows another project)"
        click.echo(f"no budgets in {target!r}{other}")
    for line in lines:
        click.echo(line)


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
    """Copy the budgets of a LiteLLM user_cost.json FILE into the store (replacing same-named ones).

    Its keys are user ids, team:NAME or tag:NAME; records may carry this package's fields
    (team, timezone, windows). Every record is checked first (the ranges in the README's
    "Limits"): if one is invalid, nothing is imported. Then each budget is written in turn.
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
            records[check_subject(name)] = budget.check_record(name, record)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{file}: {exc}; nothing was imported") from exc
    target = open_store(store, project, api_key)
    try:
        for name, record in records.items():
            target.put(name, record)
    finally:
        target.close()
    click.echo(f"imported {len(records)} budget(s) from {file}")


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
@click.option(
    "--keys",
    "keys_file",
    metavar="FILE",
    help="A JSON keys file: each key with its projects and access (read, read-write); not with --api-key.",
)
@click.option("--project", default=None, help="Serve only this project (needed when --store is one file).")
@click.option("--max-body", type=click.IntRange(1024), default=None, help="Largest request body, bytes.")
@click.option("--metrics", is_flag=True, help="Serve GET /metrics for Prometheus (needs the [metrics] extra).")
@click.option("--alert-webhook", metavar="URL", help="POST budget alerts (JSON events) to this http(s) URL.")
@click.option(
    "--alert-secret-env",
    metavar="VAR",
    help="Sign alerts with the secret in this environment variable [default: $LITELLM_BUDGET_ALERT_SECRET].",
)
@click.option(
    "--alert-threshold",
    type=float,
    multiple=True,
    metavar="PERCENT",
    help="Alert when a budget's spend reaches this percentage (repeat it; default 80 and 95).",
)
@click.option(
    "--ledger-days",
    type=click.FloatRange(1, 3650),
    default=None,
    metavar="DAYS",
    help="Keep this many days of ledger (file and Redis stores) [default: 90].",
)
@_exit_codes
def serve(
    store: str,
    host: str,
    port: int,
    api_key: str | None,
    keys_file: str | None,
    project: str | None,
    max_body: int | None,
    metrics: bool,
    alert_webhook: str | None,
    alert_secret_env: str | None,
    alert_threshold: tuple[float, ...],
    ledger_days: float | None,
) -> None:
    """Run the budget server (LiteLLM's hosted BudgetManager protocol, and atomic operations).

    Stops on SIGINT or SIGTERM after finishing the requests in flight.
    """
    from . import server
    from ._server_access import load_keys
    from .alerts import AlertSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if api_key is not None and not api_key.strip():
        raise ConfigurationError("the API key must not be empty")
    keys = None
    if keys_file is not None:
        if api_key is not None:
            raise ConfigurationError(
                f"give --keys or --api-key (${server.API_KEY_ENV}), not both: a keys file holds every key"
            )
        keys = load_keys(keys_file)
    alerting = AlertSettings.from_options(alert_webhook, alert_secret_env, alert_threshold)
    stores = server.ProjectStores.from_target(store, project=project, ledger_retention_days=ledger_days)
    options: dict[str, Any] = {} if max_body is None else {"max_body": max_body}
    if metrics:
        options["metrics"] = True
    # the server closes its observers at shutdown, before its stores: queued alerts go out first
    observers = () if alerting is None else (alerting.observer(lambda name: stores.get(name or "", create=False)),)
    server.run(
        stores, host=host, port=port, api_key=api_key, keys=keys, announce=click.echo, observers=observers, **options
    )


# --- set: windows given as options ------------------------------------------------------


def _fields(
    duration: str | None,
    timezone: str | None,
    team: str | None,
    no_team: bool,
    window_specs: tuple[str, ...],
    cap_specs: tuple[str, ...],
    no_windows: bool,
) -> dict[str, Any]:
    """The record fields ``set`` writes besides the budget: the main window's timezone (or
    none), and the team and windows if given."""
    if team is not None and no_team:
        raise ConfigurationError("--team and --no-team contradict each other: give one")
    if no_windows and (window_specs or cap_specs):
        raise ConfigurationError("--no-windows drops every window: give it without --window or --model-cap")
    fields: dict[str, Any] = {"timezone": timezone}
    if team is not None or no_team:
        fields["team"] = team
    if no_windows:
        fields["windows"] = None
    elif window_specs or cap_specs:
        given = [("--window", text, _window_spec("--window", text)) for text in window_specs]
        given += [("--model-cap", text, _model_cap(text)) for text in cap_specs]
        _check_overlaps(duration, given)
        fields["windows"] = [window for _, _, window in given]
    return fields


def _window_spec(option: str, text: str, model: str | None = None) -> dict[str, Any]:
    """``BUDGET[/DURATION][@ZONE]`` as a window, checked, or an error naming ``text``."""
    where = f"{option} {text!r}"
    spec, at, zone = text.partition("@")
    amount, slash, duration = spec.partition("/")
    window: dict[str, Any] = {"budget": _amount(amount.strip(), f"{where}: BUDGET")}
    if slash:
        window["duration"] = duration.strip()
    if at:
        window["timezone"] = zone.strip()
    if model is not None:
        window["model"] = model
    try:
        limits.check_windows(where, [window], None)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace(f"{where}: window 0", where, 1)) from None
    return window


def _model_cap(text: str) -> dict[str, Any]:
    """``MODEL=BUDGET[/DURATION][@ZONE]``: the model is what comes before the last ``=``
    (model names may hold ``@`` and ``:``, as Vertex's and Ollama's do)."""
    model, equals, spec = text.rpartition("=")
    if not equals or not model.strip():
        raise ConfigurationError(f"--model-cap {text!r}: write MODEL=BUDGET[/DURATION][@ZONE], e.g. gpt-4o=1/daily")
    return _window_spec("--model-cap", spec, model.strip())


def _check_overlaps(duration: str | None, given: list[tuple[str, str, dict[str, Any]]]) -> None:
    """No two windows of the same length for the same model, the main one included."""
    seen = {windows.overlap_key(budget.parse_duration(duration), None): "the main window (--duration)"}
    for option, text, window in given:
        key = windows.overlap_key(budget.parse_duration(window.get("duration")), window.get("model"))
        if key in seen:
            raise ConfigurationError(
                f"{option} {text!r} overlaps {seen[key]}: two windows of the same length"
                + (f" for model {window['model']!r}" if "model" in window else "")
            )
        seen[key] = f"{option} {text!r}"


# --- formatting -------------------------------------------------------------------------


def _describe(user: str, record: budget.UserRecord, duration: str | None) -> str:
    """What ``set`` echoes: the budget, its window as written, and what else the record has."""
    window = "" if duration is None else f" {_window(duration)}"
    if "timezone" in record:
        window += f" (calendar, {record['timezone']})"
    text = f"{user}: budget {_money(record['total_budget'])}{window}, spent {_money(record['current_cost'])}"
    if "team" in record:
        text += f", team {record['team']}"
    if "windows" in record:
        text += ", windows: " + ", ".join(map(_cli_tables.window_label, record["windows"]))
    return text


def _window(duration: str) -> str:
    """A window as the user wrote it ("daily", "per 1h"): the store keeps days, 0.0416667 of them."""
    text = duration.strip()
    return text if text in budget.NAMED_DURATIONS_DAYS else f"per {text}"


def _amount(text: str, name: str = "AMOUNT") -> float:
    """AMOUNT as written: ``10`` stays the whole number 10 in the store, as LiteLLM writes it."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of dollars, got {text!r}") from None


main.add_command(_cli_report.command(_store_options, _exit_codes, open_store, EPILOG))


if __name__ == "__main__":
    main()
