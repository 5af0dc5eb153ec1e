"""The budget server's operations, told to its observers (:mod:`.observe`): each one timed,
a reservation as an admission, a charge or a settlement as a charge, a 402 as a refusal and a
store failure as such. Project names are the label; subjects are the keys the request named
(a user's team, which the store reads from its record, is not among them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._server_requests import charged_by
from .errors import BudgetRefusal, StoreError
from .observe import Observers

T = TypeVar("T")


def observed(observers: Observers, project: str, name: str, args: Mapping[str, Any], run: Callable[[], T]) -> T:
    """``run()``, the store operation ``name`` of ``project`` with ``args``, told to ``observers``."""
    if not observers:
        return run()
    started = time.perf_counter()
    try:
        result = run()
    except BudgetRefusal as exc:
        observers.refused(project, exc)
        raise
    except StoreError as exc:
        observers.store_failed(project, name, exc)
        raise
    finally:
        observers.store_timed(project, name, time.perf_counter() - started)
    if name == "reserve":
        observers.admitted(project, (args["user"], *(args.get("subjects") or ())), args.get("model") or "")
    charge = charged_by(name, args, result)
    if charge is not None:
        observers.charged(project, *charge)
    return result
