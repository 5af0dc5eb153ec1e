"""BudgetGuard: a litellm callback that checks each call against its user's budget.

``litellm.callbacks.append(BudgetGuard(...))`` is the whole integration. Before a call that
carries ``user=`` reaches the provider, the guard reserves the call's worst-case cost in the
store (refusing with :class:`BudgetExceededError` when it does not fit); when the call succeeds
it charges the actual cost in place of the hold, and on failure it releases the hold. A call is
charged as litellm hands back its response (see :mod:`.hooks`), a stream by litellm's success
event when it ends. A call that cost more than its hold is an overrun (:mod:`.overruns`): logged,
and counted in :attr:`BudgetGuard.overruns` and in its user's record.

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
import math
import os
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Literal, NamedTuple

import litellm
from litellm.integrations.custom_logger import CustomLogger

from . import budget, pricing, reservations
from ._process_budget import GLOBAL_USER, PROCESS_BUDGET, StoreSpendShown
from .budget import Mode, UserRecord
from .errors import (
    BudgetExceededError,
    BudgetPluginError,
    ConfigurationError,
    StoreError,
    UnknownUserError,
)
from .hooks import GuardInstallError as GuardInstallError  # raised by BudgetGuard(), imported from here
from .hooks import _PendingPositionals, install_sync_hook, off_the_loop
from .manager import BudgetManager
from .overruns import Overrun, Overruns, overrun
from .stores import BudgetStore, FileStore, NewBudget, store_from_url

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 600.0

UnknownUsers = Literal["track", "deny", "create"]
StoreFailure = Literal["closed", "open"]
GlobalBudget = Literal["process", "store"]
AlertHandler = Callable[[str, float, float], None]

_NO_POSITIONALS: Mapping[str, Any] = {}


class _Hold(NamedTuple):
    """One reservation the guard made for a call (a named tuple: made on every call, and
    cheaper to make than a frozen dataclass)."""

    user: str
    call_id: str
    amount: float


class BudgetGuard(CustomLogger):
    """Enforce per-user budgets on every litellm call that carries ``user=``.

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
    ) -> None:
        super().__init__()
        if global_budget not in ("process", "store"):
            raise ConfigurationError(f"global_budget must be process or store, got {global_budget!r}")
        if global_duration is not None and global_budget != "store":
            raise ConfigurationError('global_duration= needs global_budget="store": a process\'s budget has no window')
        self.global_budget = global_budget
        self.global_duration = budget.parse_duration(global_duration)
        self.mode = budget.check_mode(mode)
        if unknown_users not in ("track", "deny", "create"):
            raise ConfigurationError(f"unknown_users must be track, deny or create, got {unknown_users!r}")
        if unknown_users == "create" and default_budget is None:
            raise ConfigurationError('unknown_users="create" needs default_budget')
        self._default: NewBudget | None = {
            "track": NewBudget(total_budget=None, duration=None),
            "deny": None,
            "create": NewBudget(
                total_budget=None if default_budget is None else budget.check_amount("default_budget", default_budget),
                duration=budget.parse_duration(default_duration),
            ),
        }[unknown_users]
        self.anonymous_user = None if anonymous_user is None else budget.check_user(anonymous_user)
        if on_store_error not in ("closed", "open"):
            raise ConfigurationError(f"on_store_error must be closed or open, got {on_store_error!r}")
        self.on_store_error = on_store_error
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
        self.store = _store_of(budgets, project)  # opened once the other arguments are checked
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
        request = {**positionals, **kwargs} if positionals else kwargs
        user = request.get("user") or self.anonymous_user
        global_budget = litellm.max_budget or None
        if user is None and global_budget is None:
            return
        call_id = kwargs.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            return  # litellm gives every call an id; without one the result cannot be matched
        model = str(request.get("model") or "")
        limits = pricing.output_limits(request) if call_type in pricing.OUTPUT_CALLS else []
        capped = self.cap_output and call_type in pricing.OUTPUT_CALLS
        for section, key, _ in limits if capped else ():
            if section is None and key not in kwargs:  # litellm passes it on positionally
                raise ConfigurationError(f"cap_output cannot lower {key} given by position: pass it as {key}=")
        worst = self._worst_case(call_type, model, request, limits, capped)
        estimate = worst.total
        at_least = worst.prompt_cost + self.min_output_tokens * worst.output_price if capped else None
        holds: list[_Hold] = []
        untracked: BaseException | None = None  # the store is down, and on_store_error="open"
        try:
            # The user's hold first: the next one holds no more than it (a capped call needs no more).
            if user is not None:
                try:
                    estimate = self._reserve_for(budget.check_user(user), call_id, estimate, at_least)
                    holds.append(_Hold(user, call_id, estimate))
                except StoreError as exc:
                    if self.on_store_error != "open":
                        raise
                    untracked = exc
            if global_budget is not None and (untracked is None or self.global_budget == "process"):
                estimate = self._hold_global(float(global_budget), call_id, estimate, at_least)
                holds.append(_Hold(GLOBAL_USER, call_id, estimate))
        except BaseException as exc:
            store_down = isinstance(exc, StoreError) and self.on_store_error == "open"
            kept = [hold for hold in holds if store_down and self._held_in_memory(hold)]
            for hold in holds:  # one refusal undoes the other hold
                if hold not in kept:
                    self._release_hold(hold)
            if not store_down:
                if isinstance(exc, BudgetExceededError) and not exc.hint:
                    raise self._explained(exc, call_type, model, request, limits, worst) from None
                raise
            untracked, holds = exc, kept
        if untracked is not None:  # the process budget still counts the call
            logger.warning("budget store unusable, letting call %s through untracked: %s", call_id, untracked)
        if not holds:
            return
        with self._holds_lock:
            self._holds[call_id] = holds
        if capped:
            held = min(hold.amount for hold in holds)
            tokens = worst.output_tokens if held >= worst.total else worst.output_tokens_for(held)
            _limit_output(kwargs, limits, tokens)

    def _reserve_for(self, user: str, call_id: str, estimate: float, at_least: float | None) -> float:
        """Hold the call for ``user``; returns the amount held (less than ``estimate`` only with ``at_least``)."""
        try:
            if self.mode == "strict":  # a store may admit it from this process's lease
                return self.store.admit(user, call_id, estimate, self.lease_seconds, self._default, at_least)
            record = self.store.reserve(user, call_id, estimate, self.lease_seconds, self.mode, self._default, at_least)
            return reservations.held_for(record, call_id, estimate)
        except UnknownUserError:
            hint = f'user {user!r} has no budget and unknown_users="deny": give it one with create_budget'
            raise BudgetExceededError(user, 0.0, 0.0, estimate, hint=hint) from None

    def _explained(
        self,
        refusal: BudgetExceededError,
        call_type: str,
        model: str,
        kwargs: Mapping[str, Any],
        limits: list[pricing.OutputLimit],
        worst: pricing.WorstCase,
    ) -> BudgetExceededError:
        """The refusal, saying so when most of the estimate is output tokens the caller never asked for,
        or when output was capped and not even ``min_output_tokens`` fit."""
        if call_type not in pricing.OUTPUT_CALLS:
            return refusal
        if self.cap_output:
            hint = (
                f"not even min_output_tokens={self.min_output_tokens} output tokens fit after the prompt "
                f"(${worst.prompt_cost:.6f}) with cap_output=True"
            )
        elif limits or worst.output_cost <= worst.total / 2:
            return refusal
        else:
            choices = kwargs.get("n") or 1
            per_choice = f" for each of {choices} choices" if choices > 1 else ""
            bound = self.output_token_cap is None and pricing.most_output_tokens(model) is not None
            tokens = f"output tokens, the most {model} can write" if bound else "assumed output tokens"
            hint = (
                f"of which ${worst.output_cost:.6f} is {worst.output_tokens:,} {tokens}{per_choice} "
                "(no max_tokens given): pass max_tokens= to hold less, or cap_output=True"
            )
        return BudgetExceededError(
            refusal.user, refusal.spend, refusal.budget, refusal.estimate, refusal.reserved, hint=hint
        )

    def _worst_case(
        self, call_type: str, model: str, request: Mapping[str, Any], limits: list[pricing.OutputLimit], capped: bool
    ) -> pricing.WorstCase:
        """The call's worst case. A call without an output limit (``limits``) is held for its
        model's maximum (an upper bound), or ``output_token_cap`` when set (an assumption),
        except a capped call: the guard then sets the limit, so the model's maximum is a bound."""
        cap = self.output_token_cap
        if call_type not in pricing.OUTPUT_CALLS:
            pass  # no output tokens: the cap is not read
        elif limits:
            if cap is None:  # read only if the request's limit is not: its largest is the bound
                cap = max(value for _, _, value in limits)
        elif cap is None or capped:
            cap = pricing.most_output_tokens(model)
        return pricing.worst_case(call_type, model, request, cap or pricing.DEFAULT_OUTPUT_TOKEN_CAP)

    def _hold_global(self, limit: float, call_id: str, estimate: float, at_least: float | None) -> float:
        """Hold the call's estimate against litellm.max_budget, with litellm's own (soft) rule:
        a call starts while spend and holds are under the budget; returns the amount held."""
        if self.global_budget == "process":
            return self._process_budget.hold(call_id, limit, estimate, self.lease_seconds, at_least)
        if limit != self._global_budget_seen:
            self.store.set_budget(GLOBAL_USER, limit, self.global_duration)
            self._global_budget_seen = limit
        record = self.store.reserve(GLOBAL_USER, call_id, estimate, self.lease_seconds, "soft", None, at_least)
        self._store_spend.show(record, admitted=True)  # the record is in its current window
        return reservations.held_for(record, call_id, estimate)

    def _held_in_memory(self, hold: _Hold) -> bool:
        return hold.user == GLOBAL_USER and self.global_budget == "process"

    def _release_hold(self, hold: _Hold) -> None:
        if self._held_in_memory(hold):
            self._process_budget.end(hold.call_id)
        else:
            self._quietly(functools.partial(self.store.release, hold.call_id, user=hold.user))

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
        cost = self._actual_cost(call_id, reported_cost, response_obj, model, held)
        if overrun(cost, held):
            self._count_overrun(Overrun(holds[0].call_id, model, _user_of(holds), held, cost))
        for hold in holds:
            if self._held_in_memory(hold):
                self._process_budget.end(hold.call_id, cost)
                continue
            if hold.user == GLOBAL_USER:
                # Written at once, for litellm._current_cost to follow the record. A sync call
                # is charged before completion() returns; an async one by a worker thread a
                # moment after its await returns (hooks._settle_returned: the event loop must
                # not wait on the store), which can finish out of order: StoreSpendShown keeps
                # the newest record. Those threads are joined at interpreter exit.
                record = self._quietly(
                    functools.partial(
                        self.store.charge, GLOBAL_USER, cost, model, call_id=hold.call_id, held=hold.amount
                    )
                )
                if record is not None:
                    self._store_spend.show(record)
                continue
            alert = None if self.alert_threshold is None else functools.partial(self._maybe_alert, hold.user, cost=cost)
            self._quietly(
                functools.partial(
                    self.store.charge_later,
                    hold.user,
                    cost,
                    model,
                    call_id=hold.call_id,
                    default=self._default,
                    then=alert,
                    held=hold.amount,
                )
            )

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

    def _release(self, kwargs: Mapping[str, Any]) -> None:
        call_id = kwargs.get("litellm_call_id")
        self.pending_positionals.pop(call_id)  # an async call that failed before its deployment hook
        with self._holds_lock:
            holds = self._holds.pop(call_id, None) if isinstance(call_id, str) else None
        for hold in holds or []:
            self._release_hold(hold)

    @staticmethod
    def _actual_cost(call_id: object, reported: object, response_obj: Any, model: str, held: float) -> float:
        if isinstance(reported, int | float) and not isinstance(reported, bool) and 0 <= reported < math.inf:
            return float(reported)
        try:
            return pricing.response_cost(response_obj, model)
        except BudgetPluginError:
            logger.warning("no cost for call %s of %s; charging its hold", call_id, model)
            return held

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
        except BudgetPluginError:
            logger.exception("budget store operation failed after the call; its hold expires with its lease")
            return None

    # -- litellm's callback interface (parameter names are litellm's: it calls by keyword) --

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        name = str(getattr(call_type, "value", call_type))
        positionals = self.pending_positionals.pop(kwargs.get("litellm_call_id"))
        if (kwargs.get("user") or self.anonymous_user) is None and (
            self.global_budget == "process" or not litellm.max_budget
        ):
            self.check(name, kwargs, positionals)  # no store operation: no thread hop either
        else:
            await asyncio.to_thread(self.check, name, kwargs, positionals)
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
            self.global_budget == "process" if hold.user == GLOBAL_USER else self._charges_in_memory for hold in holds
        )

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await off_the_loop(self._release, kwargs)


def _user_of(holds: list[_Hold]) -> str | None:
    """The user a call was held for; None if it was held only against litellm.max_budget."""
    return next((hold.user for hold in holds if hold.user != GLOBAL_USER), None)


def _store_of(budgets: BudgetManager | BudgetStore | str | os.PathLike[str] | None, project: str | None) -> BudgetStore:
    """The store a guard uses; ``project`` opens a URL's project, and must agree with an object's."""
    if project is not None and (not isinstance(project, str) or not project):
        raise ConfigurationError(f"project must be a non-empty string, got {project!r}")
    named: str | None
    if isinstance(budgets, BudgetManager):
        store, named = budgets.store, budgets.project_name
    elif isinstance(budgets, BudgetStore):
        store, named = budgets, getattr(budgets, "project_name", None) or getattr(budgets, "project", None)
    else:
        return store_from_url(budgets, project=project)  # a file store ignores it: a file holds one project
    if project is not None and named is not None and project != named:
        raise ConfigurationError(
            f"BudgetGuard(project={project!r}) was given {budgets!r} of project {named!r}: "
            "leave project= out, or pass a path or URL"
        )
    return store


def _limit_output(kwargs: MutableMapping[str, Any], limits: list[pricing.OutputLimit], tokens: int) -> None:
    """Lower every output limit of the request (``limits``, from :func:`pricing.output_limits`) above
    ``tokens`` to it, in ``kwargs``; with none, set ``max_tokens``, which litellm maps to each
    provider's own (``max_completion_tokens`` for OpenAI's reasoning models). ``extra_body`` is
    replaced by a copy: the caller's dict may be reused for its next call."""
    for section, key, value in limits:
        if value <= tokens:
            continue
        if section is None:
            kwargs[key] = tokens
        else:
            kwargs[section] = {**kwargs[section], key: tokens}
    if not limits:
        kwargs["max_tokens"] = tokens


def _log_alert(user: str, spend: float, limit: float) -> None:
    logger.warning("user %r has spent $%.6f of a $%.6f budget", user, spend, limit)
