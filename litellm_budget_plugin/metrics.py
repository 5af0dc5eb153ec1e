"""Prometheus metrics: what a guard or the budget server did, and where every budget stands.

:class:`BudgetMetrics` is an observer (:mod:`.observe`): the guard or the server tells it of each
admission, refusal, charge, overrun and store operation, which it counts in counters and a
histogram. The per-budget gauges (spend, limit, remaining) are not kept on the call path: they
are read from the store (``store.all()``, every record rolled to now) each time Prometheus
scrapes, by a collector that bounds their number.

::

    store = FileStore("user_cost.json")
    metrics = BudgetMetrics(store)                       # its own registry, not the global one
    litellm.callbacks.append(BudgetGuard(store, observers=[metrics]))
    metrics.serve(port=9464)                             # or expose metrics.registry yourself

The budget server makes its own (``litellm-budget serve --metrics``: ``GET /metrics``) with a
``project`` label on every series. ``prometheus_client`` is the optional extra ``[metrics]``.

Cardinality: counters are labelled by the *kind* of budget (user, team, tag, global) and by
store operation, never by a user id. The gauges name subjects, at most ``max_subjects`` per
project, those that spent most; the rest are summed into one series per kind with
``subject="__other__"``, and ``litellm_budget_subjects`` says how many budgets there are.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .errors import BudgetRefusal, ConfigurationError, StoreError, entity_of
from .observe import BudgetObserver
from .overruns import Overrun
from .stores import BudgetStore

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    from .stores.projects import ProjectStores

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_SUBJECTS", "OTHER", "BudgetMetrics"]

PREFIX = "litellm_budget"
DEFAULT_MAX_SUBJECTS = 500
OTHER = "__other__"  # the subject label of the budgets past max_subjects, summed per kind
# Store operations take from tens of microseconds (a file store's leases) to seconds (a
# server or Redis under load, a lock timeout).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EXTRA = 'pip install "litellm_budget_plugin[metrics]"'

# (project, store) pairs to read at scrape time, of the projects given (None: every one).
Stores = Callable[[Collection[str] | None], Iterable[tuple[str | None, BudgetStore]]]


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(f"metrics need prometheus_client: {EXTRA}") from exc


class BudgetMetrics(BudgetObserver):
    """Prometheus metrics of a guard (``store=``) or of the budget server (``projects=``).

    :param store: the store the guard uses: its budgets' gauges are read from it at scrape
        time. None: counters only.
    :param projects: the server's stores (instead of ``store``): every series gets a
        ``project`` label, and the gauges cover each project the server can list.
    :param max_subjects: at most this many budgets per project get series of their own (those
        that spent most); the others are summed into ``subject="__other__"``, one per kind.
    :param registry: where the metrics are registered; default a new ``CollectorRegistry``
        (pass ``prometheus_client.REGISTRY`` for the process's default one).
    :raises ConfigurationError: without ``prometheus_client`` (the ``[metrics]`` extra).
    """

    def __init__(
        self,
        store: BudgetStore | None = None,
        *,
        projects: ProjectStores | None = None,
        max_subjects: int = DEFAULT_MAX_SUBJECTS,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = BUCKETS,
    ) -> None:
        _require_prometheus()
        from prometheus_client import CollectorRegistry, Counter, Histogram

        if store is not None and projects is not None:
            raise ConfigurationError("BudgetMetrics takes a store (a guard's) or projects (a server's), not both")
        if isinstance(max_subjects, bool) or not isinstance(max_subjects, int) or max_subjects < 0:
            raise ConfigurationError(f"max_subjects must be an integer >= 0, got {max_subjects!r}")
        self.max_subjects = max_subjects
        self.registry = CollectorRegistry() if registry is None else registry
        self._project = projects is not None
        base = ["project"] if self._project else []
        made: dict[str, Any] = {"registry": None}  # registered below, with the gauges' collector
        self._admitted = Counter(f"{PREFIX}_calls_admitted", "Calls admitted (held in their budgets).", base, **made)
        self._refused = Counter(
            f"{PREFIX}_calls_refused", "Calls refused, by the kind of budget that refused.", [*base, "kind"], **made
        )
        self._charged = Counter(
            f"{PREFIX}_charged_usd",
            "Dollars charged to budgets of each kind a call named (a call charged to a user and a tag counts in both).",
            [*base, "kind"],
            **made,
        )
        self._overruns = Counter(f"{PREFIX}_overruns", "Calls that cost more than was held for them.", base, **made)
        self._overrun_usd = Counter(
            f"{PREFIX}_overrun_usd", "Dollars calls cost beyond what was held for them.", base, **made
        )
        self._store_errors = Counter(
            f"{PREFIX}_store_errors", "Store operations that failed.", [*base, "operation"], **made
        )
        self._store_seconds = Histogram(
            f"{PREFIX}_store_operation_seconds",
            "How long store operations took.",
            [*base, "operation"],
            buckets=buckets,
            **made,
        )
        self._instruments: tuple[Collector, ...] = (
            self._admitted,
            self._refused,
            self._charged,
            self._overruns,
            self._overrun_usd,
            self._store_errors,
            self._store_seconds,
        )
        if projects is not None:
            source: Stores | None = _project_stores(projects)
        elif store is not None:
            source = _one_store(store)
        else:
            source = None
        self._subjects = None if source is None else _Subjects(self, source)
        for instrument in (*self._instruments, *([self._subjects] if self._subjects else [])):
            self.registry.register(cast("Collector", instrument))

    # -- the observer: counted on the call's path (a lock and an add each) -----------------

    def _labels(self, project: str | None, *more: str) -> tuple[str, ...]:
        return (project or "", *more) if self._project else more

    def admitted(self, project: str | None, keys: Sequence[str], model: str) -> None:
        _child(self._admitted, self._labels(project)).inc()

    def refused(self, project: str | None, error: BudgetRefusal) -> None:
        _child(self._refused, self._labels(project, entity_of(error.subject)[0])).inc()

    def charged(self, project: str | None, keys: Sequence[str], cost: float, model: str) -> None:
        if cost <= 0:
            return
        for kind in {entity_of(key)[0] for key in keys}:
            _child(self._charged, self._labels(project, kind)).inc(cost)

    def overran(self, project: str | None, call: Overrun) -> None:
        _child(self._overruns, self._labels(project)).inc()
        _child(self._overrun_usd, self._labels(project)).inc(max(call.excess, 0.0))

    def store_failed(self, project: str | None, operation: str, error: BaseException) -> None:
        _child(self._store_errors, self._labels(project, operation)).inc()

    def store_timed(self, project: str | None, operation: str, seconds: float) -> None:
        _child(self._store_seconds, self._labels(project, operation)).observe(seconds)

    # -- exposing -------------------------------------------------------------------------

    @property
    def content_type(self) -> str:
        """The Content-Type of :meth:`exposition`'s text."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST

    def exposition(self, projects: Collection[str] | None = None) -> bytes:
        """These metrics in Prometheus' text format; with ``projects``, only those projects'
        series (and only their stores are read). Blocking: it reads the stores."""
        from prometheus_client import generate_latest

        return generate_latest(cast("CollectorRegistry", _View(self, projects)))

    def serve(self, port: int = 9464, addr: str = "127.0.0.1") -> WSGIServer:
        """Serve :attr:`registry` on ``http://addr:port/metrics`` from a daemon thread
        (prometheus_client's ``start_http_server``); ``port=0`` takes a free port. Returns the
        server: ``.server_port`` is its port, ``.shutdown()`` then ``.server_close()`` stop it."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr, registry=self.registry)
        return server


def _child(metric: Any, labels: tuple[str, ...]) -> Any:
    """The series of ``metric`` for ``labels`` (the metric itself when it has no labels)."""
    return metric.labels(*labels) if labels else metric


def _one_store(store: BudgetStore) -> Stores:
    return lambda _projects: [(None, store)]


def _project_stores(stores: ProjectStores) -> Stores:
    def read(projects: Collection[str] | None) -> Iterator[tuple[str | None, BudgetStore]]:
        for name in stores.names():
            if projects is not None and name not in projects:
                continue
            store = stores.get(name, create=False)
            if store is not None:
                yield name, store

    return read


class _View:
    """A registry-like view of the metrics for one scrape: only ``projects``' series."""

    def __init__(self, metrics: BudgetMetrics, projects: Collection[str] | None) -> None:
        self._metrics = metrics
        self._projects = projects

    def collect(self) -> Iterator[Metric]:
        metrics, projects = self._metrics, self._projects
        for instrument in metrics._instruments:
            for family in instrument.collect():
                if projects is not None and metrics._project:
                    family.samples = [s for s in family.samples if s.labels.get("project") in projects]
                yield family
        if metrics._subjects is not None:
            yield from metrics._subjects.collect(projects)


@dataclass
class _Sum:
    """The budgets of one kind past max_subjects, summed."""

    spend: float = 0.0
    limit: float = 0.0
    remaining: float = 0.0
    limited: int = 0  # how many of them have a limit


class _Subjects:
    """The per-budget gauges, read from the stores at scrape time."""

    def __init__(self, metrics: BudgetMetrics, source: Stores) -> None:
        self._metrics = metrics
        self._source = source

    def describe(self) -> list[Metric]:
        return []  # registering must not read the store

    def collect(self, projects: Collection[str] | None = None) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        metrics = self._metrics
        base = ["project"] if metrics._project else []
        labels = [*base, "subject", "kind"]
        spend = GaugeMetricFamily(f"{PREFIX}_spend_usd", "Spend in the budget's current window.", labels=labels)
        limit = GaugeMetricFamily(f"{PREFIX}_limit_usd", "The budget's limit (budgets with one).", labels=labels)
        remaining = GaugeMetricFamily(
            f"{PREFIX}_remaining_usd", "Limit minus spend, at least 0 (budgets with a limit).", labels=labels
        )
        count = GaugeMetricFamily(f"{PREFIX}_subjects", "How many budgets there are, by kind.", labels=[*base, "kind"])
        for project, store in self._source(projects):
            try:
                records = store.all()
            except StoreError as exc:
                logger.warning("metrics: the budgets of project %r could not be read: %s", project, exc)
                metrics.store_failed(project, "metrics", exc)
                continue
            at = metrics._labels(project)
            kinds: dict[str, int] = {}
            rows: list[tuple[float, str, str, float | None]] = []
            for key, record in records.items():
                kind = entity_of(key)[0]
                kinds[kind] = kinds.get(kind, 0) + 1
                rows.append((float(record["current_cost"]), key, kind, record["total_budget"]))
            for kind, n in sorted(kinds.items()):
                count.add_metric([*at, kind], n)
            if len(rows) > metrics.max_subjects:
                shown = heapq.nsmallest(metrics.max_subjects, rows, key=lambda row: (-row[0], row[1]))
                rest: dict[str, _Sum] = {}
                kept = {row[1] for row in shown}
                for row in rows:
                    if row[1] not in kept:
                        _add(rest.setdefault(row[2], _Sum()), row[0], row[3])
            else:
                shown, rest = rows, {}
            for used, key, kind, budget in shown:
                spend.add_metric([*at, key, kind], used)
                if budget is not None:
                    limit.add_metric([*at, key, kind], budget)
                    remaining.add_metric([*at, key, kind], max(budget - used, 0.0))
            for kind, other in sorted(rest.items()):
                spend.add_metric([*at, OTHER, kind], other.spend)
                if other.limited:
                    limit.add_metric([*at, OTHER, kind], other.limit)
                    remaining.add_metric([*at, OTHER, kind], other.remaining)
        yield from (spend, limit, remaining, count)


def _add(total: _Sum, used: float, budget: float | None) -> None:
    total.spend += used
    if budget is not None:
        total.limit += budget
        total.remaining += max(budget - used, 0.0)
        total.limited += 1
