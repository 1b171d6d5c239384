"""Prometheus metrics of a service: :class:`ServiceCollector`, for ``prometheus_client``.

``prometheus_client`` is an optional dependency: install ``asycamore[metrics]``.  This
module imports it when a collector is made, so that ``import asycamore.metrics`` works
without it, and :class:`ServiceCollector` then raises a :class:`MetricsUnavailable`
that says what to install::

    from prometheus_client import CollectorRegistry, start_http_server
    from asycamore.metrics import ServiceCollector

    registry = CollectorRegistry()
    registry.register(ServiceCollector(service))
    start_http_server(9100, addr="127.0.0.1", registry=registry)

Each scrape reads :meth:`~asycamore.servicemodel.Service.statistics` once, from the
scraping thread (the counts are plain integers, each read whole).  The names follow
Prometheus' conventions: an ``asycamore_`` prefix, ``_total`` on counters, the unit
(``_bytes``, ``_seconds``) before it, and a ``backend`` label naming the dispatch
context's backend.  :data:`METRICS` lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .servicemodel import Service

__all__ = ["METRICS", "MetricsUnavailable", "ServiceCollector"]

COUNTER: Final = "counter"
GAUGE: Final = "gauge"

METRICS: Final[tuple[tuple[str, str, str, str], ...]] = (
    # (name as exposed, type, where it comes from, help)
    ("asycamore_connections_open", GAUGE, "connections_open", "Stream connections open now."),
    (
        "asycamore_connections_accepted_total",
        COUNTER,
        "connections_accepted",
        "Connections accepted by the service's listeners.",
    ),
    (
        "asycamore_connections_closed_total",
        COUNTER,
        "connections_closed",
        "Connections closed after they were accepted or connected.",
    ),
    (
        "asycamore_connections_failed_total",
        COUNTER,
        "connections_failed",
        "Client connects that did not connect.",
    ),
    (
        "asycamore_received_bytes_total",
        COUNTER,
        "bytes_received",
        "Bytes read from the service's stream and datagram sockets.",
    ),
    (
        "asycamore_sent_bytes_total",
        COUNTER,
        "bytes_sent",
        "Bytes the service's stream and datagram sockets took to send.",
    ),
    (
        "asycamore_datagrams_received_total",
        COUNTER,
        "datagrams_received",
        "Datagrams received.",
    ),
    ("asycamore_datagrams_sent_total", COUNTER, "datagrams_sent", "Datagrams sent."),
    (
        "asycamore_tls_handshakes_total",
        COUNTER,
        "tls_handshakes",
        "TLS handshakes completed.",
    ),
    (
        "asycamore_tls_handshakes_failed_total",
        COUNTER,
        "tls_handshakes_failed",
        "TLS handshakes that failed, timed out or were cut short.",
    ),
    ("asycamore_processes_running", GAUGE, "processes_running", "Child processes running."),
    (
        "asycamore_processes_exited_total",
        COUNTER,
        "processes_exited",
        "Child processes that have exited.",
    ),
    (
        "asycamore_timers_fired_total",
        COUNTER,
        "timers_fired",
        "Scheduled calls made by the service's timers.",
    ),
    # The dispatch context's statistics, when it has them.
    (
        "asycamore_dispatch_rounds_total",
        COUNTER,
        "dispatch.rounds",
        "Dispatch rounds (dispatch_once calls).",
    ),
    (
        "asycamore_dispatch_events_total",
        COUNTER,
        "dispatch.events",
        "Readiness reports delivered.",
    ),
    (
        "asycamore_handler_calls_total",
        COUNTER,
        "dispatch.handler_calls",
        "Handler calls made by the dispatch context.",
    ),
    (
        "asycamore_handler_errors_total",
        COUNTER,
        "dispatch.handler_errors",
        "Handler calls that raised.",
    ),
    (
        "asycamore_dispatch_waiting_seconds_total",
        COUNTER,
        "dispatch.time_waiting",
        "Seconds blocked in the OS readiness call (measured in debug mode only).",
    ),
    (
        "asycamore_dispatch_handling_seconds_total",
        COUNTER,
        "dispatch.time_dispatching",
        "Seconds spent running handlers (measured in debug mode only).",
    ),
    (
        "asycamore_registered_targets",
        GAUGE,
        "dispatch.registered",
        "Targets registered in the dispatch context now.",
    ),
)
"""Every metric: its exposed name, type, the :class:`~asycamore.servicemodel.ServiceStatistics`
field it reports (``dispatch.`` for a field of its ``dispatch``) and its help text."""


class MetricsUnavailable(ImportError):
    """``prometheus_client`` is not installed (install ``asycamore[metrics]``)."""


class ServiceCollector:
    """A ``prometheus_client`` collector of *service*'s statistics (see the module
    docstring): register it in a ``CollectorRegistry``.

    Raises :class:`MetricsUnavailable` if ``prometheus_client`` is not installed.
    The dispatch metrics are left out for a context without ``statistics()``.
    """

    def __init__(self, service: Service) -> None:
        try:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError:
            raise MetricsUnavailable(
                "the metrics need prometheus_client: pip install 'asycamore[metrics]'"
            ) from None
        self.service = service
        """The service whose statistics are collected."""
        self._families = {COUNTER: CounterMetricFamily, GAUGE: GaugeMetricFamily}

    def collect(self) -> Iterator[Metric]:
        """One metric family per statistic, labelled with the backend's name."""
        stats = self.service.statistics()
        backend = self.service.dispatcher.name
        for name, kind, where, documentation in METRICS:
            source: object = stats
            owner, _, field = where.rpartition(".")
            if owner:
                source = getattr(stats, owner)
                if source is None:
                    continue
            # CounterMetricFamily adds the _total itself.
            family = self._families[kind](
                name.removesuffix("_total"), documentation, labels=["backend"]
            )
            family.add_metric([backend], getattr(source, field))
            yield family
