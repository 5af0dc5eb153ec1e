"""The guard's place on litellm's call path: which litellm versions work, and how calls are hooked.

litellm gives callbacks no veto over sync calls, so :func:`install_sync_hook` wraps
``litellm.utils.function_setup``, which litellm's ``@client`` wrappers look up at call time for
every entry point (also for functions imported before the guard existed, and for each sync
Router attempt); and ``update_response_metadata``, which the wrappers call (also looked up at
call time: a module global up to about 1.95, fetched from ``sys.modules`` later) with the final,
priced response just before they return it. Both are private API that every release from
:data:`MIN_LITELLM` on has in this shape: :func:`install_sync_hook` checks the version and proves
the check is on the path with a probe call, raising :class:`GuardInstallError` if not, so no
release is ever silently unguarded. The same probe shows whether ``update_response_metadata`` is
on the path too; if not, a warning says so and success events settle calls (a moment later).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from types import FrameType, MappingProxyType
from typing import Any, TypeVar

import litellm
import litellm.utils
from litellm.types.utils import EmbeddingResponse, ModelResponse, TextCompletionResponse

from .errors import BudgetPluginError

logger = logging.getLogger(__name__)

# The oldest litellm whose internals this relies on; newer releases need no change unless the
# probe says so. The releases CI tests are listed in .ci/litellm-matrix.
MIN_LITELLM = (1, 80)
SUPPORTED_LITELLM = "litellm>=1.80"

# Flags litellm sets on the sync function an async entry point runs in a worker thread.
ASYNC_FLAGS = ("acompletion", "aembedding", "atext_completion", "aimg_generation", "atranscription")
_SETTLED_ON_RETURN = (ModelResponse, EmbeddingResponse, TextCompletionResponse)
_COROUTINE_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR

T = TypeVar("T")


class GuardInstallError(BudgetPluginError, RuntimeError):
    """The installed litellm cannot be guarded: too old, or the sync-call hook is not on its call path."""


class _ProbeSeen(Exception):
    """Raised by the hook for the start-up probe call: it proves the hook is on the path."""


_PROBE_KEY = "__litellm_budget_plugin_probe__"
_install_lock = threading.Lock()
_installed = False
_probe_reached: set[str] = set()  # which wrapped functions the start-up probe call passed through
_settles_on_return = False
_guard_type: type[Any] | None = None
# Settlements an async call cannot make on the event loop (a server or Redis store, a
# store-wide global budget: they write over the network or take a file lock). They land a moment
# after the call's await returns; the threads are joined at interpreter exit, so no charge is
# lost when a program ends its loop right after its last call.
_settlers = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="budget-settle")


def install_sync_hook(guard_type: type[Any]) -> None:
    """Put ``guard_type``'s check on litellm's sync call path, once, and prove it is there.

    Each callback in ``litellm.callbacks`` that is a ``guard_type`` then has ``check(name,
    kwargs, positionals)`` called before a sync call (``positionals``: the call's positional
    arguments by name; an async call's are put in the guard's ``pending_positionals`` for its
    deployment hook), and ``_settle(details, response, cost)`` as a sync or async call returns.

    :raises GuardInstallError: litellm is older than :data:`MIN_LITELLM`, lacks
        ``litellm.utils.function_setup``, or a probe completion does not reach the hook.
        litellm is then left as it was.
    """
    global _installed, _guard_type
    with _install_lock:
        if _installed:
            return
        version = litellm_version()
        check_litellm_version(version)
        setup = getattr(litellm.utils, "function_setup", None)
        if not callable(setup):
            raise GuardInstallError(
                f"litellm {version} has no litellm.utils.function_setup, where BudgetGuard checks "
                f"sync calls; supported: {SUPPORTED_LITELLM} (see the README)"
            )
        updater = getattr(litellm.utils, "update_response_metadata", None)
        _guard_type = guard_type
        try:
            _wrap("function_setup", setup, _guarded_function_setup)
            if callable(updater):  # an optimisation: success events settle calls without it
                _wrap("update_response_metadata", updater, _settling_update_response_metadata)
            _probe(version)
        except BaseException:
            _unwrap("function_setup", setup)
            if callable(updater):
                _unwrap("update_response_metadata", updater)
            raise
        _installed = True


def settles_on_return() -> bool:
    """Whether the start-up probe saw litellm hand its response to the wrapped
    ``update_response_metadata``: calls are then charged as they return, else by success events."""
    return _settles_on_return


def litellm_version() -> str:
    try:
        return metadata.version("litellm")
    except metadata.PackageNotFoundError:
        raise GuardInstallError(
            f"cannot tell which litellm is installed (no package metadata for the litellm imported from "
            f"{litellm.__file__}); BudgetGuard needs {SUPPORTED_LITELLM}"
        ) from None


def check_litellm_version(version: str) -> None:
    """Raise GuardInstallError naming ``version`` unless it is at least :data:`MIN_LITELLM`."""
    match = re.match(r"(\d+)\.(\d+)(?!\d)", version)
    if match is None:
        raise GuardInstallError(f"cannot read litellm's version {version!r}; BudgetGuard needs {SUPPORTED_LITELLM}")
    if (int(match[1]), int(match[2])) < MIN_LITELLM:
        raise GuardInstallError(
            f"litellm {version} is too old for BudgetGuard, which supports {SUPPORTED_LITELLM}: "
            f'pip install "litellm>={MIN_LITELLM[0]}.{MIN_LITELLM[1]}"'
        )


def _wrap(name: str, current: Callable[..., Any], wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    if not getattr(current, "__budget_guard__", False):
        setattr(litellm.utils, name, wrapper(current))


def _unwrap(name: str, original: Callable[..., Any]) -> None:
    setattr(litellm.utils, name, original)


def _guards() -> Iterator[Any]:
    for callback in list(litellm.callbacks):
        if _guard_type is not None and isinstance(callback, _guard_type):
            yield callback


_LITELLM_WRAPPERS_FILE = litellm.utils.__file__  # where litellm's @client wrappers are
_FRAMES_SEARCHED = 4  # our wrapper's caller and a few more, in case another library wraps too


def _called_from_coroutine(caller: FrameType) -> bool:
    """Whether litellm's wrapper calling our wrapper (from ``caller``) is its async one (a coroutine).

    Up to about 1.100 litellm's wrappers do not say whether a call is async; the code calling
    us does. The nearest frame in litellm's wrappers' file within a few is theirs (a wrapper
    someone else put around ours is skipped); else the direct caller decides.
    """
    frame = caller
    for _ in range(_FRAMES_SEARCHED):
        if frame.f_code.co_filename == _LITELLM_WRAPPERS_FILE:
            return bool(frame.f_code.co_flags & _COROUTINE_CODE)
        if frame.f_back is None:
            break
        frame = frame.f_back
    return bool(caller.f_code.co_flags & _COROUTINE_CODE)


def _async_call_default(function: Callable[..., Any]) -> bool | None:
    """The default of ``function``'s ``is_async_call`` parameter, which later litellm releases
    give function_setup (their async wrapper relies on it), or None if it has none."""
    try:
        parameter = inspect.signature(function).parameters.get("is_async_call")
    except (TypeError, ValueError):
        return None
    if parameter is None or not isinstance(parameter.default, bool):
        return None
    return parameter.default


def _is_probe(call_kwargs: Mapping[str, Any]) -> bool:
    metadata = call_kwargs.get("metadata")
    return isinstance(metadata, dict) and _PROBE_KEY in metadata


def _guarded_function_setup(original: Callable[..., Any]) -> Callable[..., Any]:
    async_default = _async_call_default(original)

    @functools.wraps(original)
    def function_setup(original_function: str, rules_obj: Any, start_time: Any, *args: Any, **kwargs: Any) -> Any:
        if async_default is None:
            is_async = (
                kwargs["is_async_call"] if "is_async_call" in kwargs else _called_from_coroutine(sys._getframe(1))
            )
        else:
            is_async = kwargs.get("is_async_call", async_default)
        result = original(original_function, rules_obj, start_time, *args, **kwargs)
        _, call_kwargs = result
        if is_async:  # checked in async_pre_call_deployment_hook, which is given no positional arguments
            if args:
                _keep_for_deployment_hook(original_function, args, call_kwargs)
            return result
        if _is_probe(call_kwargs):
            _probe_reached.add("function_setup")
            return result  # on to update_response_metadata, unchecked
        if any(call_kwargs.get(flag) is True for flag in ASYNC_FLAGS):
            return result
        positionals = named_positionals(original_function, args) if args else _NONE
        for guard in _guards():
            guard.check(original_function, call_kwargs, positionals)
        return result

    function_setup.__budget_guard__ = True  # type: ignore[attr-defined]
    return function_setup


_NONE: Mapping[str, Any] = MappingProxyType({})


@functools.lru_cache(maxsize=128)
def _positional_names(function_name: str) -> tuple[str, ...]:
    """The names litellm's ``function_name`` gives its positional arguments, in order. An async
    entry point taking ``*args`` (``aembedding``, ``atext_completion``) passes them on to its sync
    function, whose names they get."""
    function = getattr(litellm, function_name, None)
    try:
        parameters = list(inspect.signature(function).parameters.values()) if callable(function) else []
    except (TypeError, ValueError):
        parameters = []
    names: list[str] = []
    for parameter in parameters:
        if parameter.kind == inspect.Parameter.VAR_POSITIONAL:
            if not names and function_name.startswith("a"):
                return _positional_names(function_name[1:])
            break
        if parameter.kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            break
        names.append(parameter.name)
    return tuple(names)


def named_positionals(function_name: str, args: tuple[Any, ...]) -> Mapping[str, Any]:
    """The positional arguments of a call of litellm's ``function_name``, by parameter name
    (``completion("openai/gpt-4o", messages)`` gives ``model`` and ``messages``)."""
    return dict(zip(_positional_names(str(function_name)), args, strict=False))


def with_positionals(kwargs: Mapping[str, Any], positionals: Mapping[str, Any]) -> Mapping[str, Any]:
    """A call's arguments by name, to read: its keywords and its positional arguments (from
    :func:`named_positionals`), which are never added to the request (litellm passes them on as given)."""
    return {**positionals, **kwargs} if positionals else kwargs


class _PendingPositionals:
    """Named positional arguments of async calls, kept by call id from ``function_setup`` (which
    sees them) until the call's ``async_pre_call_deployment_hook`` (which is given only keywords)
    or failure event takes them. Bounded: past :attr:`LIMIT` calls waiting, the oldest is dropped
    with a warning (its call is then estimated from its keywords alone)."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._calls: dict[str, Mapping[str, Any]] = {}
        self._lock = threading.Lock()

    def put(self, call_id: str, positionals: Mapping[str, Any]) -> None:
        with self._lock:
            if len(self._calls) >= self.LIMIT:
                dropped = next(iter(self._calls))
                del self._calls[dropped]
                logger.warning(
                    "dropped the positional arguments of async call %s: %d calls are waiting for their "
                    "deployment hook; it is estimated from its keyword arguments",
                    dropped,
                    self.LIMIT,
                )
            self._calls[call_id] = positionals

    def __len__(self) -> int:
        return len(self._calls)

    def pop(self, call_id: object) -> Mapping[str, Any]:
        if not self._calls:  # most calls: keywords only, nothing kept, no lock
            return _NONE
        with self._lock:
            return self._calls.pop(call_id, _NONE) if isinstance(call_id, str) else _NONE


def _keep_for_deployment_hook(function_name: str, args: tuple[Any, ...], call_kwargs: Mapping[str, Any]) -> None:
    call_id = call_kwargs.get("litellm_call_id")
    if not isinstance(call_id, str):
        return
    guards = list(_guards())
    if guards:
        positionals = named_positionals(function_name, args)
        for guard in guards:
            guard.pending_positionals.put(call_id, positionals)


def _settling_update_response_metadata(original: Callable[..., Any]) -> Callable[..., Any]:
    """Settle a finished call as litellm hands back its response.

    litellm's wrappers call ``update_response_metadata`` once the response is final and priced,
    just before returning it. Settling there instead of in the success events, which litellm
    runs on its logging thread or as a task after the call returns, means the spend is current
    when ``completion()`` or ``await acompletion()`` returns, even if the program then ends its
    event loop. Streams are charged by their success event when they end.
    """

    @functools.wraps(original)
    def update_response_metadata(*args: Any, **kwargs: Any) -> Any:
        outcome = original(*args, **kwargs)
        result, call_kwargs = kwargs.get("result"), kwargs.get("kwargs")
        if isinstance(call_kwargs, dict) and _is_probe(call_kwargs):
            _probe_reached.add("update_response_metadata")
            raise _ProbeSeen  # before litellm runs success events for it
        # What the success event will be given: the call id, and the model without its provider.
        details = getattr(kwargs.get("logging_obj"), "model_call_details", None)
        if (
            isinstance(result, _SETTLED_ON_RETURN)
            and isinstance(call_kwargs, dict)
            and isinstance(details, dict)
            and not call_kwargs.get("stream")
            and not any(call_kwargs.get(flag) is True for flag in ASYNC_FLAGS)
        ):
            caller = sys._getframe(1)  # walked only if some guard's settling would block a loop
            for guard in _guards():
                _settle_returned(guard, details, result, caller)
        return outcome

    update_response_metadata.__budget_guard__ = True  # type: ignore[attr-defined]
    return update_response_metadata


def _settle_returned(guard: Any, details: dict[str, Any], result: Any, caller: FrameType) -> None:
    """Settle in the caller's thread, unless that is an event loop and settling would block it
    (a store that writes at once, a store-wide global budget): a worker thread settles it then
    (the call's holds are taken from the guard only once, whoever runs)."""
    settle = functools.partial(_settle_quietly, guard, details, result, _hidden_cost(result))
    if not guard._settles_in_memory(details.get("litellm_call_id")) and _called_from_coroutine(caller):
        try:
            _settlers.submit(settle)
            return
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            pass  # settle here: blocking now holds up nothing but the exit
    settle()


def _settle_quietly(guard: Any, details: dict[str, Any], result: Any, cost: object) -> None:
    try:
        guard._settle(details, result, cost)
    except Exception:  # the call was served: never fail it here
        logger.exception("settling call %s failed; its hold expires with its lease", details.get("litellm_call_id"))


def _hidden_cost(result: Any) -> object:
    params = getattr(result, "_hidden_params", None)
    if isinstance(params, dict | Mapping):  # a dict, told apart without the slower ABC check
        return params.get("response_cost")
    return getattr(params, "response_cost", None)


async def off_the_loop(function: Callable[..., T], *args: Any) -> T:
    """``await asyncio.to_thread(function, *args)``, or run it here when the interpreter is exiting.

    litellm runs async success events still queued at exit in a last event loop, when Python
    refuses new threads; blocking then holds up nothing but the exit.
    """
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(None, functools.partial(function, *args))
    except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
        return function(*args)
    return await future


def _probe(version: str) -> None:
    """Make a mock completion that passes the wrapped function_setup (unchecked) and is stopped
    by the wrapped update_response_metadata, before litellm logs it anywhere ("no-log"), and
    outside litellm's cache."""
    global _settles_on_return
    _probe_reached.clear()
    retries = litellm.num_retries  # litellm clears it on any failed sync completion
    failure: Exception | None = None
    try:
        litellm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "probe"}],
            mock_response="probe",
            metadata={_PROBE_KEY: True},
            caching=False,  # nor looked up in nor added to litellm.cache, if the app has one
            cache={"no-cache": True, "no-store": True},
            **{"no-log": True},
        )
    except _ProbeSeen:
        pass
    except Exception as exc:
        failure = exc
    finally:
        litellm.num_retries = retries
    if "function_setup" not in _probe_reached:
        if failure is not None:
            raise GuardInstallError(
                f"BudgetGuard's start-up probe (a mock litellm.completion) failed on litellm {version} before "
                f"reaching the sync-call hook: {type(failure).__name__}: {failure}"
            ) from failure
        raise GuardInstallError(
            f"BudgetGuard could not hook litellm {version}'s sync calls: a probe completion never reached "
            f"litellm.utils.function_setup, so sync calls would not be checked (supported: {SUPPORTED_LITELLM}; "
            "a newer litellm may have moved it: see the README)"
        )
    _settles_on_return = "update_response_metadata" in _probe_reached
    if not _settles_on_return:
        logger.warning(
            "BudgetGuard: litellm %s does not hand responses to litellm.utils.update_response_metadata, so "
            "calls are charged by litellm's success events, a moment after they return (an async call's "
            "charge is lost if the program ends its event loop at once); see the README, 'Which litellm'%s",
            version,
            "" if failure is None else f" (the probe call ended with {type(failure).__name__}: {failure})",
        )
