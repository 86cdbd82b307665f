"""Prometheus metrics of the gateway on a separate admin port (``GET /metrics``).

Served by an aiohttp server inside mitmproxy's event loop on
``gatewatch_admin_host:gatewatch_admin_port`` (loopback by default; 0 turns
it off). On a non-loopback address the gateway refuses to start without
``gatewatch_admin_token``; with a token every scrape needs
``Authorization: Bearer <token>`` (:mod:`gatewatch.admin_auth`). Metrics are
in the Prometheus text exposition format produced by
``prometheus_client.generate_latest`` from a registry of this addon's own
(not the process-global one). If the port cannot be bound the gateway logs
a warning and serves traffic anyway (metrics fail open).

Per-request counting is a dict increment in ``response``/``error``; the
other figures are read from the addons' own counters at scrape time (a
custom collector), so hooks do no extra work for them. Served from the
event loop thread, the collector never races the hooks.

==========================================  =======  =====================================
metric                                      type     labels / source
==========================================  =======  =====================================
gatewatch_requests_total                    counter  route, status (route cardinality is
                                                     capped at :data:`MAX_ROUTES`, the rest
                                                     is ``route="other"``)
gatewatch_auth_failures_total               counter  reason (``missing``, ``invalid``, …)
gatewatch_rate_limited_total                counter  scope (``ip``, ``principal``, ``throttle``)
gatewatch_blocked_total                     counter  scope (``deny_list`` or decision scope)
gatewatch_upstream_circuit_refused_total    counter  503s of open circuit breakers
gatewatch_upstream_circuits_open            gauge    routes whose breaker is not closed
gatewatch_event_queue_depth                 gauge    events waiting in memory
gatewatch_events_sent_total                 counter  events acknowledged by the broker
gatewatch_events_spooled_total              counter  events written to the disk spool
gatewatch_events_dropped_total              counter  events lost (queue/spool full), by reason
gatewatch_spool_bytes                       gauge    bytes of events waiting on disk
gatewatch_broker_send_latency_seconds       histo.   send → broker acknowledgement
gatewatch_decisions_active                  gauge    decisions held by enforcement
gatewatch_decision_delivery_seconds         histo.   a decision message's publication (its
                                                     Kafka timestamp) → applied here, for
                                                     those read after start-up
gatewatch_allow_entries_active              gauge    allow entries held by enforcement
gatewatch_requests_allow_listed_total       counter  requests let through by an allow entry
gatewatch_decision_messages_malformed_total counter  skipped decision messages
gatewatch_decisions_rejected_total          counter  decision messages ignored, by reason:
                                                     ``unsigned`` (no signature),
                                                     ``bad_signature`` (one that does not
                                                     verify), ``malformed``
gatewatch_ratelimit_backend_errors_total    counter  requests the rate limiter's Redis did not
                                                     judge: reason (``timeout``, ``error``,
                                                     ``down``), outcome (``fail_open``,
                                                     ``fail_closed``)
gatewatch_requests_rejected_total           counter  HTTP/1 request heads refused before
                                                     parsing (:mod:`inline.size_limits`), by
                                                     reason (``header_too_large``,
                                                     ``too_many_headers``,
                                                     ``request_line_too_long``)
==========================================  =======  =====================================

Under the minimal master (:mod:`inline.serve`) the gatewatch addons sit
inside one :class:`inline.chain.Chain`, where mitmproxy's addon lookup
cannot see them; :func:`_addon` looks through the chain's members too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from mitmproxy import ctx, exceptions, http
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from gatewatch import admin_auth
from gatewatch.settings import load_settings
from inline import flowtags, size_limits
from inline.histogram import LatencyHistogram
from inline.flowstate import get_facts

logger = logging.getLogger(__name__)

#: Distinct route labels kept; later routes are counted as ``other``.
MAX_ROUTES = 500
METERED_KEY = "gatewatch.metered"


class _Collector:
    """prometheus_client custom collector over the addon's counters and the other addons' stats."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter("gatewatch_requests", "Requests answered, by route template and status.",
                       ("route", "status"), {(r, str(s)): n for (r, s), n in m.requests.items()})
        yield _counter("gatewatch_auth_failures", "Requests refused by authentication, by reason.",
                       ("reason",), {(k,): n for k, n in m.auth_failures.items()})
        yield _counter("gatewatch_rate_limited", "Requests answered 429, by scope.",
                       ("scope",), {(k,): n for k, n in m.rate_limited.items()})
        yield _counter("gatewatch_blocked", "Requests answered 403 by a list or decision, by scope.",
                       ("scope",), {(k,): n for k, n in m.blocked.items()})
        breaker = _addon("circuitbreaker")
        if breaker is not None:
            yield _counter("gatewatch_upstream_circuit_refused", "Requests answered 503 by an open breaker.",
                           (), {(): breaker.refused})
            yield _gauge("gatewatch_upstream_circuits_open", "Route breakers not closed.",
                         sum(1 for b in breaker.breakers.values() if b.state != "closed"))
        shipper = _addon("eventshipper")
        if shipper is not None:
            st = shipper.stats
            yield _gauge("gatewatch_event_queue_depth", "Request events waiting in memory.", shipper.queue_depth())
            yield _counter("gatewatch_events_sent", "Request events acknowledged by the broker.", (), {(): st.sent})
            yield _counter("gatewatch_events_spooled", "Request events written to the disk spool.",
                           (), {(): st.spooled})
            yield _counter("gatewatch_events_dropped", "Request events lost, by reason.", ("reason",),
                           {(reason,): n for reason, n in st.dropped_by_reason().items()})
            yield _gauge("gatewatch_spool_bytes", "Bytes of request events waiting on disk.", shipper.spool_bytes())
            yield _histogram("gatewatch_broker_send_latency_seconds",
                             "Time from handing an event to the producer to its acknowledgement.", st.latency)
        enforcement = _addon("enforcement")
        if enforcement is not None:
            yield _gauge("gatewatch_decisions_active", "Decisions held by the gateway.", len(enforcement.store))
            yield _histogram("gatewatch_decision_delivery_seconds",
                             "Time from a decision message's publication (its Kafka timestamp) to the gateway "
                             "applying it, for messages read after the start-up read of the topic.",
                             enforcement.stats.delivery)
            yield _gauge("gatewatch_allow_entries_active", "Allow entries (gatewatch allowlist) held by the gateway.",
                         len(enforcement.allowed))
            yield _counter("gatewatch_requests_allow_listed",
                           "Requests let through by an allow entry (no decision nor rate limit applied).",
                           (), {(): enforcement.stats.allow_listed})
            yield _counter("gatewatch_decision_messages_malformed", "Decision messages skipped as malformed.",
                           (), {(): enforcement.stats.malformed})
            st = enforcement.stats
            yield _counter("gatewatch_decisions_rejected",
                           "Decision messages ignored: no signature, a signature that does not verify "
                           "(gatewatch/signing.py), or malformed.", ("reason",),
                           {("unsigned",): st.unsigned, ("bad_signature",): st.bad_signature,
                            ("malformed",): st.malformed})
            yield _counter("gatewatch_challenges",
                           "Requests under a challenge decision, by outcome: answered a challenge (403) or "
                           "let through by a solved one (inline/challenge.py; passed_unshared: let through "
                           "while the shared ledger in Redis was away).", ("outcome",),
                           {("challenged",): st.challenged, ("passed",): st.challenges_passed,
                            ("passed_unshared",): st.challenges_passed_unshared})
        yield _counter("gatewatch_requests_rejected",
                       "HTTP/1 request heads refused before parsing (431/414), by reason.",
                       ("reason",), {(k,): n for k, n in size_limits.rejected.items()})
        ratelimit = _addon("ratelimit")
        if ratelimit is not None:
            yield _counter("gatewatch_ratelimit_backend_errors",
                           "Requests the rate limiter's Redis did not judge (slow or down), by reason and outcome.",
                           ("reason", "outcome"), dict(ratelimit.backend_errors))


def _addon(name: str) -> Any:
    """The addon called ``name`` (mitmproxy's naming: ``name`` attribute or lower-case
    class name), also among the members of a :class:`inline.chain.Chain`; None if absent."""
    try:
        manager = ctx.master.addons
    except Exception:  # no master (unit tests without a context)
        return None
    found = manager.get(name)
    if found is not None:
        return found
    for addon in manager.chain:
        for member in getattr(addon, "members", ()):
            if getattr(member, "name", type(member).__name__.lower()) == name:
                return member
    return None


def _counter(name: str, doc: str, labels: tuple[str, ...], values: dict[tuple[str, ...], int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, histogram: LatencyHistogram) -> Metric:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets=histogram.cumulative(), sum_value=histogram.sum)
    return family


class Metrics:
    """Addon: counts answered requests and serves ``/metrics`` on the admin port.

    Options: ``gatewatch_admin_host``, ``gatewatch_admin_port`` (0 = off),
    ``gatewatch_admin_token`` (bearer token; required off loopback, else
    ``OptionsError`` at start-up).
    Place it after every addon that may answer or record an outcome, and
    before the event shipper.
    """

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.blocked: Counter[str] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._routes: set[str] = set()
        self._runner = None
        self.bound: tuple[str, int] | None = None

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_admin_host", str, s.admin_host,
                          "Address of the admin (Prometheus metrics) server; keep it on loopback.")
        loader.add_option("gatewatch_admin_port", int, s.admin_port,
                          "Port of the admin server, GET /metrics; 0 turns it off.")
        loader.add_option("gatewatch_admin_token", str, s.admin_token or "",
                          "Bearer token the admin server requires (needed off loopback).")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "gatewatch_admin_port" in updated and not 0 <= o.gatewatch_admin_port <= 65535:
            raise exceptions.OptionsError("gatewatch_admin_port must be within 0..65535")
        if updated & {"gatewatch_admin_host", "gatewatch_admin_port", "gatewatch_admin_token"} \
                and o.gatewatch_admin_port:
            try:
                admin_auth.require_token_if_exposed(o.gatewatch_admin_host, o.gatewatch_admin_token,
                                                    "gateway metrics server (gatewatch_admin_host)")
            except admin_auth.AdminTokenRequired as exc:
                raise exceptions.OptionsError(str(exc)) from None

    async def running(self) -> None:
        if self._runner is not None or not ctx.options.gatewatch_admin_port:
            return
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = ctx.options.gatewatch_admin_host, ctx.options.gatewatch_admin_port
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:  # fail open: the gateway serves traffic without metrics
            logger.warning("metrics admin server cannot listen on %s:%d: %s", host, port, exc)
            await runner.cleanup()
            return
        self._runner, self.bound = runner, (host, port)

    async def done(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner, self.bound = None, None

    async def _serve(self, request):
        from aiohttp import web

        if not admin_auth.authorized(request.headers.get("Authorization"), ctx.options.gatewatch_admin_token):
            return web.Response(status=401, text="401 Unauthorized: bearer token required\n",
                                headers=admin_auth.challenge())
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def scrape(self) -> bytes:
        """The exposition text, as ``/metrics`` serves it."""
        return generate_latest(self.registry)

    def _route_label(self, route: str) -> str:
        if route in self._routes:
            return route
        if len(self._routes) < MAX_ROUTES:
            self._routes.add(route)
            return route
        return "other"

    def count(self, flow: http.HTTPFlow, status: int) -> None:
        """Count one answered request of ``flow`` with ``status``."""
        if flow.metadata.get(METERED_KEY):
            return
        flow.metadata[METERED_KEY] = True
        facts = get_facts(flow)
        route = self._route_label(facts.route if facts is not None and facts.route else "unknown")
        self.requests[(route, status)] += 1
        if facts is None:
            return
        if facts.answered_by == "auth":
            self.auth_failures[facts.auth] += 1
        elif facts.answered_by == "rate_limit" and status == 429:
            self.rate_limited[flowtags.blocked_scope(flow) or "unknown"] += 1
        elif facts.answered_by == "decision" and status == 403:
            self.blocked[flowtags.blocked_scope(flow) or "unknown"] += 1

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            self.count(flow, flow.response.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.request is None:
            return
        from inline.events_shipper import error_status

        self.count(flow, error_status(flow)[0])
