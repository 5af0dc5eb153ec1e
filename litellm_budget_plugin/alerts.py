"""Budget alerts sent to a webhook: thresholds crossed, budgets exceeded, windows reset.

``BudgetGuard(alert_webhook=URL)`` and ``litellm-budget serve --alert-webhook URL`` attach a
:class:`WebhookAlerts` observer (:mod:`.observe`). It does no I/O on the caller's path: a
charge or a refusal is queued, and a background thread reads the budgets' records from the
store, finds what to tell (:class:`AlertTracker`, pure apart from its memory of what it sent)
and hands the events to a :class:`~._webhook.WebhookSender`, which posts them with retries.

Events, each sent once per budget (subject) and window, in this process:

- ``threshold_crossed``: the spend of a window reached ``threshold`` percent of its budget
  (each of ``alert_thresholds``, 80 and 95 by default). Seen when the budget is charged.
- ``budget_exceeded``: a call was refused by the window (the first refusal in it).
- ``budget_reset``: a budget seen in one window is seen again in a later one (windows roll
  lazily: at its next charge or refusal), with the spend last seen in the window that closed.

What to send is decided in :mod:`.alert_events` (pure); delivery is :mod:`._webhook`'s. A threshold is armed again
if the window's spend is seen below it (``litellm-budget reset``, a raised budget).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ._webhook import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSender,
    check_webhook_url,
    sign,
    verify_signature,
)
from .alert_events import DEFAULT_THRESHOLDS, AlertTracker, Event, WindowView, check_thresholds, windows_of
from .budget import UserRecord
from .errors import BudgetRefusal, ConfigurationError
from .observe import BudgetObserver
from .stores import BudgetStore

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EVENT_HEADER",
    "EVENT_ID_HEADER",
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "AlertSettings",
    "AlertTracker",
    "WebhookAlerts",
    "WebhookSender",
    "WindowView",
    "check_secret",
    "check_thresholds",
    "check_webhook_url",
    "sign",
    "verify_signature",
    "windows_of",
]

SECRET_ENV = "LITELLM_BUDGET_ALERT_SECRET"
MAX_SECRET_CHARS = 1024
MAX_WORK = 10_000  # charges and refusals waiting for the alert thread

StoreOf = Callable[[str | None], BudgetStore | None]  # a project's store (None: the guard's one)


def check_secret(secret: object, name: str = "alert_secret") -> str | None:
    if secret is None:
        return None
    if not isinstance(secret, str) or not secret.strip() or len(secret) > MAX_SECRET_CHARS:
        raise ConfigurationError(f"{name} must be a non-empty string of at most {MAX_SECRET_CHARS} characters")
    return secret


# --- the observer -------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertSettings:
    """Checked alert options (``alert_webhook=``, ``alert_secret=``, ``alert_thresholds=``)."""

    webhook: str
    secret: str | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    @classmethod
    def checked(cls, webhook: object, secret: object = None, thresholds: object = None) -> AlertSettings | None:
        """The settings, or None without a webhook; ConfigurationError names a bad one."""
        if webhook is None:
            if secret is not None or thresholds is not None:
                raise ConfigurationError("alert_secret and alert_thresholds need alert_webhook")
            return None
        return cls(
            check_webhook_url(webhook),
            check_secret(secret),
            DEFAULT_THRESHOLDS if thresholds is None else check_thresholds(thresholds),
        )

    @classmethod
    def from_options(
        cls,
        webhook: str | None,
        secret_env: str | None,
        thresholds: Sequence[float],
        environ: Mapping[str, str] = os.environ,
    ) -> AlertSettings | None:
        """``litellm-budget serve``'s ``--alert-*`` options: the secret is read from the environment
        variable ``secret_env`` names (which must be set), else from $LITELLM_BUDGET_ALERT_SECRET
        if set (a secret on the command line would show in the process list)."""
        if secret_env is not None:
            secret = environ.get(secret_env)
            if not secret:
                raise ConfigurationError(f"--alert-secret-env {secret_env}: that environment variable is not set")
        else:
            secret = environ.get(SECRET_ENV) or None
        if webhook is None:
            if secret_env is not None or thresholds:
                raise ConfigurationError("--alert-secret-env and --alert-threshold need --alert-webhook")
            return None
        return cls.checked(webhook, secret, thresholds or None)

    def observer(self, store_of: StoreOf) -> WebhookAlerts:
        return WebhookAlerts(self.webhook, secret=self.secret, thresholds=self.thresholds, store_of=store_of)


class WebhookAlerts(BudgetObserver):
    """Sends alert events to a webhook; ``charged`` and ``refused`` only queue work.

    ``store_of(project)`` gives the store holding a project's budgets (a guard's: its store).
    """

    def __init__(
        self,
        url: str,
        *,
        store_of: StoreOf,
        secret: str | None = None,
        thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
        sender: WebhookSender | None = None,
    ) -> None:
        self.sender = sender if sender is not None else WebhookSender(url, secret=check_secret(secret))
        self.tracker = AlertTracker(thresholds)
        self._store_of = store_of
        self._reset_for_process()
        _LIVE.add(self)

    def _reset_for_process(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._work: deque[tuple[str | None, Sequence[str] | BudgetRefusal, str]] = deque()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    # -- BudgetObserver: on the caller's path, so only a queue append --

    def charged(self, project: str | None, keys: Sequence[str], cost: float, model: str) -> None:
        self._put((project, tuple(keys), model))

    def refused(self, project: str | None, error: BudgetRefusal) -> None:
        self._put((project, error, ""))

    def _put(self, item: tuple[str | None, Sequence[str] | BudgetRefusal, str]) -> None:
        if self._pid != os.getpid():
            self._reset_for_process()
        with self._cond:
            if self._closed:
                return
            if len(self._work) >= MAX_WORK:
                self._work.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning("alerts: %d charge(s) not checked: the alert thread is behind", self.dropped)
            self._work.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="litellm-budget-alerts", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` seconds for queued charges to be checked and their events sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._cond.wait_for(lambda: not self._work and not self._busy, timeout):
                return False
        return self.sender.flush(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        """Check what is queued and deliver its events for up to ``timeout`` seconds, then stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._pid != os.getpid() or self._closed:
                return
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        self.sender.close(max(0.0, deadline - time.monotonic()))
        _LIVE.discard(self)

    # -- the alert thread --

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._work or self._closed)
                if not self._work:
                    return
                batch = list(self._work)
                self._work.clear()
                self._busy = True
            try:
                self._check(batch)
            except Exception:
                logger.exception("alerts: checking charges for alerts failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _check(self, batch: list[tuple[str | None, Sequence[str] | BudgetRefusal, str]]) -> None:
        """Read the budgets a batch charged, each once (with its latest model), and each refusal's;
        in order: the charges before a refusal are checked before it."""
        charged: dict[tuple[str | None, str], str] = {}
        for project, what, model in batch:
            if isinstance(what, BudgetRefusal):
                self._check_charged(charged)
                charged = {}
                record = self._read(project, what.subject)
                self._send(self.tracker.refused(what, record, self._now(project), project=project))
            else:
                for key in what:
                    charged.pop((project, key), None)
                    charged[(project, key)] = model
        self._check_charged(charged)

    def _check_charged(self, charged: dict[tuple[str | None, str], str]) -> None:
        done: set[tuple[str | None, str]] = set()
        for (project, key), model in charged.items():
            record = self._charged(project, key, model, done)
            team = None if record is None else record.get("team")
            if team is not None:  # a user's charge is its team's too (the store reads the team there)
                self._charged(project, f"team:{team}", model, done)

    def _charged(
        self, project: str | None, key: str, model: str, done: set[tuple[str | None, str]]
    ) -> UserRecord | None:
        if (project, key) in done:
            return None
        done.add((project, key))
        record = self._read(project, key)
        if record is not None:
            self._send(self.tracker.charged(key, record, self._now(project), project=project, model=model or None))
        return record

    def _read(self, project: str | None, key: str) -> UserRecord | None:
        try:
            store = self._store_of(project)
            return None if store is None else store.get(key)
        except Exception as exc:
            logger.warning("alerts: cannot read the budget of %r: %s", key, exc)
            return None

    def _now(self, project: str | None) -> float:
        """The store's time (a test's frozen clock too), else the machine's."""
        try:
            clock = getattr(self._store_of(project), "clock", None)
            now = clock() if callable(clock) else None
        except Exception:
            now = None
        return now if isinstance(now, float | int) and math.isfinite(now) else time.time()

    def _send(self, events: list[Event]) -> None:
        for event in events:
            self.sender.send(event)


_LIVE: weakref.WeakSet[WebhookAlerts] = weakref.WeakSet()
EXIT_TIMEOUT = 5.0  # seconds, for every webhook together, to deliver what is queued at exit


@atexit.register
def _close_all() -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    for alerts in list(_LIVE):
        alerts.close(max(0.0, deadline - time.monotonic()))
