"""BudgetGuard: a litellm callback that checks each call against every budget that applies to it.

``litellm.callbacks.append(BudgetGuard(...))`` is the whole integration. Before a call reaches
the provider, the guard reserves its worst-case cost in the store against its user, the user's
team, the call's team and tags and (``global_budget="store"``) the global budget, all in one
store operation (refusing with :class:`BudgetExceededError`, naming the budget that refused,
when it does not fit one); when the call succeeds it charges the actual cost in place of the
holds, and on failure it releases them. A call is charged as litellm hands back its response
(see :mod:`.hooks`), a stream by litellm's success event when it ends. A call that cost more
than its hold is an overrun (:mod:`.overruns`): logged, and counted in
:attr:`BudgetGuard.overruns` and in its budgets' records.

Async calls are stopped in litellm's ``async_pre_call_deployment_hook``. litellm gives
callbacks no veto over sync calls, so :func:`.hooks.install_sync_hook` wraps
``litellm.utils.function_setup``, which litellm's ``@client`` wrapper looks up at call time for
every sync entry point. That is private API: the hook is proved on the call path with a probe
call, and :class:`GuardInstallError` raised if not, so an upgrade never leaves calls silently
unguarded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, Literal, NamedTuple

import litellm
from litellm.integrations.custom_logger import CustomLogger

from . import budget, pricing, reservations
from ._estimates import actual_cost, call_usage, charged_model, check_cappable, explained, limit_output, worst_case
from ._guard_setup import TRACKED, check_choice, new_user_budget, store_of
from ._process_budget import GLOBAL_USER, PROCESS_BUDGET, StoreSpendShown
from .alerts import AlertSettings
from .budget import Mode, UserRecord
from .errors import (
    BudgetExceededError,
    BudgetPluginError,
    ConfigurationError,
    StoreError,
    UnknownUserError,
)
from .hooks import GuardInstallError as GuardInstallError  # raised by BudgetGuard(), imported from here
from .hooks import _PendingPositionals, install_sync_hook, off_the_loop, with_positionals
from .manager import BudgetManager
from .observe import BudgetObserver, Observers
from .overruns import Overrun, Overruns, overrun
from .scope import call_subjects
from .stores import BudgetStore, FileStore, NewBudget
from .subjects import kind_of

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 600.0

UnknownUsers = Literal["track", "deny", "create"]
StoreFailure = Literal["closed", "open"]
GlobalBudget = Literal["process", "store"]
AlertHandler = Callable[[str, float, float], None]

_NO_POSITIONALS: Mapping[str, Any] = {}


class _Hold(NamedTuple):
    """One hold the guard made for a call (a named tuple: made on every call, and cheaper to
    make than a frozen dataclass): in the store under ``key`` and each of ``also``, in one
    operation; or in this process's budget (``key`` GLOBAL_USER, ``global_budget="process"``)."""

    key: str
    call_id: str
    amount: float
    also: tuple[str, ...] = ()


class BudgetGuard(CustomLogger):
    """Enforce budgets on litellm calls: their users', teams', tags' and the global one.

    A call's budgets (see :func:`.scope.call_subjects`): its user (``user=``, else the
    :func:`.scope.budget_scope` in force, else ``anonymous_user``) with the team its record
    names; its team (``metadata={"team": ...}``, else the scope's); its tags
    (``metadata={"tags": [...]}`` and the scope's). A call with a team or tags but no user is
    held against them alone: it is not charged to any user, and the first of them (its team, else
    its first tag) keeps the store's hold. A call with none of them is not tracked, except by
    ``litellm.max_budget``. Bad tags or teams refuse the call with ConfigurationError before
    anything is held.

    :param budgets: a :class:`BudgetManager`, a store, a path or URL, or None for the default
        store (``$LITELLM_BUDGET_STORE`` or ``user_cost.json``).
    :param project: the project of a server or Redis URL (default ``"default"``); a file holds
        one project. With a manager or store object it must match the project it already has.
    :param mode: ``"strict"`` admits a call only if spend + holds + its estimate fit the
        budget; ``"soft"`` (LiteLLM's rule) admits while spend + holds are under it.
    :param unknown_users: a user with no budget is ``"track"``-ed without a limit, ``"deny"``-ed,
        or given ``default_budget``/``default_duration`` on first sight (``"create"``).
    :param anonymous_user: charge calls without ``user=`` to this user (default: untracked).
    :param on_store_error: ``"closed"`` refuses calls while the store cannot be used;
        ``"open"`` lets them through untracked by the store, logging each (the per-process
        ``litellm.max_budget``, in memory, still counts them).
    :param lease_seconds: how long a hold lasts if its call never reports back (a crashed
        process, an abandoned stream).
    :param output_token_cap: how many output tokens to hold for a call without ``max_tokens``
        (its model's output limit if lower): 1 to 10,000,000. Default None: the model's
        ``max_output_tokens`` (an upper bound; 4,096 for a model the cost map gives no limit).
        A number is an assumption, not a bound: a call that writes more is an overrun.
    :param cap_output: for chat and text completions, set the request's output limit to what
        the budget can pay after the prompt (at most the model's maximum, which a call without
        ``max_tokens`` is then held for), so a small budget answers instead of refusing; a call
        is refused only when not even ``min_output_tokens`` fit. It changes the request.
    :param min_output_tokens: the fewest output tokens a capped call may be given: 1 to 10,000,000.
    :param alert_threshold: fraction of a budget whose crossing calls ``on_alert(user, spend,
        budget)`` (default: a warning in the log).
    :param global_budget: what ``litellm.max_budget`` limits: ``"process"`` (litellm's meaning:
        this process's spend, ``litellm._current_cost``, which starts at 0 in each process) or
        ``"store"`` (the spend of every process sharing the store, in the record
        ``litellm.max_budget``, over ``global_duration`` windows, e.g. ``"daily"``).
    :param observers: :class:`~.observe.BudgetObserver` objects told of every admission,
        refusal, charge, overrun and store failure (metrics, webhook alerts).
    :param alert_webhook: an http(s) URL to POST alert events to (:mod:`.alerts`): thresholds
        crossed, budgets exceeded, windows reset; from a background thread (``self.alerts``).
    :param alert_secret: signs each event (``X-Litellm-Budget-Signature``, HMAC-SHA256).
    :param alert_thresholds: percentages of a budget that send ``threshold_crossed`` (80, 95).
    """

    def __init__(
        self,
        budgets: BudgetManager | BudgetStore | str | os.PathLike[str] | None = None,
        *,
        project: str | None = None,
        mode: Mode = "strict",
        unknown_users: UnknownUsers = "track",
        default_budget: float | None = None,
        default_duration: str | float | None = None,
        anonymous_user: str | None = None,
        on_store_error: StoreFailure = "closed",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        output_token_cap: int | None = None,
        cap_output: bool = False,
        min_output_tokens: int = 16,
        alert_threshold: float | None = None,
        on_alert: AlertHandler | None = None,
        global_budget: GlobalBudget = "process",
        global_duration: str | float | None = None,
        observers: Iterable[BudgetObserver] = (),
        alert_webhook: str | None = None,
        alert_secret: str | None = None,
        alert_thresholds: Iterable[float] | None = None,
    ) -> None:
        super().__init__()
        check_choice("global_budget", global_budget, ("process", "store"))
        if global_duration is not None and global_budget != "store":
            raise ConfigurationError('global_duration= needs global_budget="store": a process\'s budget has no window')
        self.global_budget = global_budget
        self.global_duration = budget.parse_duration(global_duration)
        self.mode = budget.check_mode(mode)
        self._default = new_user_budget(unknown_users, default_budget, default_duration)
        self.anonymous_user = None if anonymous_user is None else budget.check_user(anonymous_user)
        self.on_store_error = check_choice("on_store_error", on_store_error, ("closed", "open"))
        self.lease_seconds = budget.check_lease_seconds(lease_seconds)
        if output_token_cap is not None:
            output_token_cap = budget.check_tokens("output_token_cap", output_token_cap)
        self.output_token_cap = output_token_cap
        if not isinstance(cap_output, bool):
            raise ConfigurationError(f"cap_output must be True or False, got {cap_output!r}")
        self.cap_output = cap_output
        self.min_output_tokens = budget.check_tokens("min_output_tokens", min_output_tokens)
        if alert_threshold is not None and not 0 < budget.check_amount("alert_threshold", alert_threshold) <= 1:
            raise ConfigurationError(f"alert_threshold must be in (0, 1], got {alert_threshold!r}")
        self.alert_threshold = alert_threshold
        self.on_alert = on_alert or _log_alert
        self.observers = Observers(observers)
        alerting = AlertSettings.checked(alert_webhook, alert_secret, alert_thresholds)
        self.store = store_of(budgets, project)  # opened once the other arguments are checked
        self.alerts = None if alerting is None else alerting.observer(lambda _project: self.store)
        if self.alerts is not None:
            self.observers = Observers((*self.observers.observers, self.alerts))
        self._charges_in_memory = isinstance(self.store, FileStore)  # see _settles_in_memory
        self._process_budget = PROCESS_BUDGET  # litellm._current_cost is the process's, not a guard's
        self._store_spend = StoreSpendShown()
        self._holds: dict[str, list[_Hold]] = {}
        self._holds_lock = threading.Lock()
        self._global_budget_seen: float | None = None
        self._overruns = Overruns()
        self._overruns_lock = threading.Lock()
        self.pending_positionals = _PendingPositionals()  # async calls' positional arguments (hooks.py)
        install_sync_hook(BudgetGuard)

    @property
    def overruns(self) -> Overruns:
        """The calls this guard settled at more than it held for them, since it was made.

        Each is also logged as a warning and counted in its user's record (``overruns``,
        ``overrun_cost``, shown by ``litellm-budget show``), which every process shares.
        """
        return self._overruns

    # -- admission -----------------------------------------------------------------------

    def check(
        self, call_type: str, kwargs: MutableMapping[str, Any], positionals: Mapping[str, Any] = _NO_POSITIONALS
    ) -> None:
        """Reserve the call's worst-case cost, or raise BudgetExceededError; with ``cap_output``,
        lower the output limit in ``kwargs`` (the request) to what the holds pay for.

        ``positionals`` are the call's positional arguments by parameter name: estimated with
        the keywords, never added to ``kwargs`` (litellm passes them on positionally).
        Called before the provider is contacted, from the sync hook or the async hook.
        """
        request = with_positionals(kwargs, positionals)
        limit = litellm.max_budget or None
        self._hold(call_type, kwargs, request, self._budgets_of(request, limit), limit)

    def _budgets_of(self, request: Mapping[str, Any], limit: float | None) -> tuple[str, ...]:
        """The store budgets a call is held against, the one keeping its hold first: its user, team
        and tags (:func:`.scope.call_subjects`), and the global budget's record in store mode."""
        keys = call_subjects(request, self.anonymous_user)
        return (*keys, GLOBAL_USER) if limit is not None and self.global_budget == "store" else keys

    def _hold(
        self,
        call_type: str,
        kwargs: MutableMapping[str, Any],
        request: Mapping[str, Any],
        keys: tuple[str, ...],
        limit: float | None,
    ) -> None:
        """Hold the call in the store against ``keys`` in one operation, then against the process
        budget (``limit``, process mode); one refusal undoes the other hold."""
        if not keys and limit is None:
            return
        call_id = kwargs.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            return  # litellm gives every call an id; without one the result cannot be matched
        model = str(request.get("model") or "")
        limits = pricing.output_limits(request) if call_type in pricing.OUTPUT_CALLS else []
        capped = self.cap_output and call_type in pricing.OUTPUT_CALLS
        if capped:
            check_cappable(kwargs, limits)
        worst = worst_case(call_type, model, request, limits, capped, self.output_token_cap)
        estimate = worst.total
        at_least = worst.prompt_cost + self.min_output_tokens * worst.output_price if capped else None
        holds: list[_Hold] = []
        try:
            # The store's hold first: the process's holds no more than it (a capped call needs no more).
            if keys:
                try:
                    charged = charged_model(model, request)  # as its charge will name it
                    # A tag without a budget keeps no hold: the next budget keeps the call's.
                    while (
                        keys and (held := self._reserve_for(keys, call_id, estimate, at_least, charged, limit)) is None
                    ):
                        keys = keys[1:]
                    if held is not None:
                        estimate = held
                        holds.append(_Hold(keys[0], call_id, estimate, keys[1:]))
                except StoreError as exc:
                    self.observers.store_failed(None, "admit", exc)
                    if self.on_store_error != "open":
                        raise
                    # The process budget still counts the call.
                    logger.warning("budget store unusable, letting call %s through untracked: %s", call_id, exc)
            if limit is not None and self.global_budget == "process":
                estimate = self._process_budget.hold(call_id, float(limit), estimate, self.lease_seconds, at_least)
                holds.append(_Hold(GLOBAL_USER, call_id, estimate))
        except BaseException as exc:
            for hold in holds:
                self._release_hold(hold)
            if isinstance(exc, BudgetExceededError):
                refusal = exc if exc.hint else explained(exc, call_type, model, request, limits, worst, self)
                self.observers.refused(None, refusal)
                if refusal is not exc:
                    raise refusal from None
            raise
        if not holds:
            return
        if self.observers:  # no list made on the call path for a guard nobody watches
            self.observers.admitted(None, [key for hold in holds for key in (hold.key, *hold.also)], model)
        with self._holds_lock:
            self._holds[call_id] = holds
        if capped:
            held = min(hold.amount for hold in holds)
            tokens = worst.output_tokens if held >= worst.total else worst.output_tokens_for(held)
            limit_output(kwargs, limits, tokens)

    def _reserve_for(
        self,
        keys: tuple[str, ...],
        call_id: str,
        estimate: float,
        at_least: float | None,
        model: str,
        limit: float | None,
    ) -> float | None:
        """Hold the call in every budget of ``keys`` in one store operation, under the first;
        returns the amount held (less than ``estimate`` only with ``at_least``), or None if the
        first is a tag without a budget (nothing held)."""
        owner, others = keys[0], keys[1:]
        if GLOBAL_USER in keys and limit != self._global_budget_seen:
            self.store.set_budget(GLOBAL_USER, limit, self.global_duration)
            self._global_budget_seen = limit
        hold, default = (owner, call_id, estimate, self.lease_seconds), self._default_for(owner)
        try:
            # A store may admit a strict call from this process's lease; the global budget keeps
            # LiteLLM's soft rule, which no lease applies.
            started = time.perf_counter()
            if self.mode == "strict" and owner != GLOBAL_USER:
                held = self.store.admit(*hold, default, at_least, model=model, subjects=others)
            else:
                record = self.store.reserve(*hold, self.mode, default, at_least, model=model, subjects=others)
                held = reservations.held_for(record, call_id, estimate)
            if self.observers:
                self.observers.store_timed(None, "admit", time.perf_counter() - started)
        except UnknownUserError:
            if kind_of(owner) == "tag":
                return None
            hint = f'user {owner!r} has no budget and unknown_users="deny": give it one with create_budget'
            raise BudgetExceededError(owner, 0.0, 0.0, estimate, hint=hint) from None
        if limit is not None and GLOBAL_USER in keys:
            self._store_spend.admitted(self.store, limit)
        return held

    def _default_for(self, key: str) -> NewBudget | None:
        """What a budget the store has no record of is made with: ``unknown_users`` decides for a
        user; a team or the global budget is tracked without a limit; a tag is not tracked (None:
        apps tag calls for their logs, and a record per tag would grow the store without bound)."""
        if kind_of(key) == "tag":
            return None
        return self._default if kind_of(key) == "user" and key != GLOBAL_USER else TRACKED

    def _held_in_memory(self, hold: _Hold) -> bool:
        return hold.key == GLOBAL_USER and self.global_budget == "process"

    def _release_hold(self, hold: _Hold) -> None:
        if self._held_in_memory(hold):
            self._process_budget.end(hold.call_id)
        else:
            self._quietly(functools.partial(self.store.release, hold.call_id, user=hold.key))

    # -- outcome -------------------------------------------------------------------------

    def _settle(self, kwargs: Mapping[str, Any], response_obj: Any, reported_cost: object) -> None:
        """Charge a finished call its actual cost in place of its holds (once: holds are popped)."""
        call_id = kwargs.get("litellm_call_id")
        self.pending_positionals.pop(call_id)  # an async call its deployment hook never saw
        with self._holds_lock:
            holds = self._holds.pop(call_id, None) if isinstance(call_id, str) else None
        if not holds:
            return
        model = str(kwargs.get("model") or "")
        # The smallest hold is what the call was estimated (or, with cap_output, capped) to cost:
        # the guard counts an overrun of it once; each record counts one of its own hold.
        held = min(hold.amount for hold in holds)
        cost = actual_cost(call_id, reported_cost, response_obj, model, held)
        if overrun(cost, held):
            self._count_overrun(Overrun(holds[0].call_id, model, _user_of(holds), held, cost))
        usage = call_usage(response_obj, tuple(key for hold in holds for key in hold.also))
        for hold in holds:
            if self._held_in_memory(hold):
                self._process_budget.end(hold.call_id, cost)
                if self.observers:
                    self.observers.charged(None, (hold.key, *hold.also), cost, model)
                continue
            alert = None if self.alert_threshold is None else functools.partial(self._maybe_alert, hold.key, cost=cost)
            self._quietly(
                functools.partial(
                    self.store.charge_later,
                    hold.key,
                    cost,
                    model,
                    call_id=hold.call_id,
                    default=self._default_for(hold.key),
                    then=alert,
                    held=hold.amount,
                    subjects=hold.also,
                    usage=usage,
                )
            )
            # after the store has the charge: an observer reading the record sees it (alerts)
            if self.observers:
                self.observers.charged(None, (hold.key, *hold.also), cost, model)
            if GLOBAL_USER in (hold.key, *hold.also):
                # Read at once (a store's reads see its pending charges), for litellm._current_cost
                # to follow the record. A sync call is charged before completion() returns; an
                # async one by a worker thread a moment after its await returns
                # (hooks._settle_returned: the event loop must not wait on the store), which can
                # finish out of order: StoreSpendShown keeps the newest record. Those threads are
                # joined at interpreter exit.
                record = self._quietly(functools.partial(self.store.get, GLOBAL_USER))
                if record is not None:
                    self._store_spend.show(record)

    def _count_overrun(self, call: Overrun) -> None:
        logger.warning(
            "call %s of model %s for user %r cost $%.8f, more than the $%.8f held for it (its estimate)",
            call.call_id,
            call.model,
            call.user,
            call.actual,
            call.held,
        )
        with self._overruns_lock:
            self._overruns = self._overruns.plus(call)
        self.observers.overran(None, call)

    def _release(self, kwargs: Mapping[str, Any]) -> None:
        call_id = kwargs.get("litellm_call_id")
        self.pending_positionals.pop(call_id)  # an async call that failed before its deployment hook
        with self._holds_lock:
            holds = self._holds.pop(call_id, None) if isinstance(call_id, str) else None
        for hold in holds or []:
            self._release_hold(hold)

    def _maybe_alert(self, user: str, record: UserRecord, *, cost: float) -> None:
        limit = record["total_budget"]
        if self.alert_threshold is None or not limit:
            return
        line = self.alert_threshold * limit
        spend = record["current_cost"]
        if spend >= line > spend - cost:
            self.on_alert(user, spend, limit)

    def _quietly(self, operation: Callable[[], Any]) -> Any:
        """Run a store operation after the call: a failure must not break the caller's result."""
        try:
            return operation()
        except BudgetPluginError as exc:
            logger.exception("budget store operation failed after the call; its hold expires with its lease")
            self.observers.store_failed(None, getattr(operation, "func", operation).__name__, exc)
            return None

    # -- litellm's callback interface (parameter names are litellm's: it calls by keyword) --

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        name = str(getattr(call_type, "value", call_type))
        positionals = self.pending_positionals.pop(kwargs.get("litellm_call_id"))
        if self._budgets_of(with_positionals(kwargs, positionals), litellm.max_budget or None):
            await asyncio.to_thread(self.check, name, kwargs, positionals)  # a copy of this task's context
        else:
            self.check(name, kwargs, positionals)  # no store operation: no thread hop either
        return kwargs  # litellm sends what this returns: an output limit cap_output lowered

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._settle(kwargs, response_obj, kwargs.get("response_cost"))

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._release(kwargs)

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        call_id = kwargs.get("litellm_call_id")
        if call_id not in self._holds:
            return  # most async calls were settled as they returned (hooks.py)
        if self._settles_in_memory(call_id):
            self._settle(kwargs, response_obj, kwargs.get("response_cost"))
        else:
            await off_the_loop(self._settle, kwargs, response_obj, kwargs.get("response_cost"))

    def _settles_in_memory(self, call_id: object) -> bool:
        """Whether settling the call only changes memory, so the event loop can do it at once
        instead of paying a thread hop: a file store takes charges in memory (charge_later) and
        its flusher writes them; the process budget is memory."""
        with self._holds_lock:
            holds = self._holds.get(call_id, ()) if isinstance(call_id, str) else ()
        return all(
            self._held_in_memory(hold) or (self._charges_in_memory and GLOBAL_USER not in (hold.key, *hold.also))
            for hold in holds
        )

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await off_the_loop(self._release, kwargs)


def _user_of(holds: list[_Hold]) -> str | None:
    """The budget keeping a call's store hold (its user, else its team or first tag); None if it
    was held only against litellm.max_budget."""
    return next((hold.key for hold in holds if hold.key != GLOBAL_USER), None)


def _log_alert(user: str, spend: float, limit: float) -> None:
    logger.warning("user %r has spent $%.6f of a $%.6f budget", user, spend, limit)
