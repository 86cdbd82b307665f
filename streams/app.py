"""The Faust app of the gatewatch worker.

Settings come from ``GATEWATCH_*`` environment variables (read once, at import).
Quirks designed around (measured, DESIGN.md):

* Tansu: group joins take about half the session timeout, so the session
  timeout is short (:data:`SESSION_TIMEOUT_S`); Tansu answers "latest offset"
  wrongly, so a new group starts from the earliest offset.
* Tansu does not wake a waiting fetch: Faust's fixed 1500 ms fetch wait is
  replaced by ``settings.fetch_max_wait_ms`` (:mod:`streams.fetch_wait`).
* Topics are created by the launcher with their partition counts; the worker
  never declares topics (``topic_allow_declare=False``) and uses no leader topic.
* Faust's web server defaults to port 6066 on all interfaces: here it binds
  ``worker_web_host:worker_web_port`` from the settings (loopback by default);
  every route, Faust's own too, needs the admin token once one is set, and a
  non-loopback host without one stops the worker at import
  (:mod:`streams.web_auth`).
* The chDB store is opened, migrated and warmed in :meth:`GatewatchApp.on_start`,
  before the consumer starts, and closed after every agent has stopped.
* Once started, the start-up heap is frozen out of garbage collections and
  the youngest generation made larger (:mod:`streams.heap`): full collections
  over it stalled the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust

from gatewatch.settings import GatewatchSettings, load_settings
from streams.fetch_wait import FastFetchTransport
from streams.heap import tune_collector
from streams.store import Store
from streams.web_auth import check_exposure, token_middleware

#: Consumer-group session timeout (s). Tansu quirk: a group join takes about half of it.
SESSION_TIMEOUT_S = 6.0
#: Heartbeats well inside the session timeout (Kafka's rule of thumb: at most a third).
HEARTBEAT_INTERVAL_S = 1.0
#: How long the group waits for members to rejoin during a rebalance (s).
REBALANCE_TIMEOUT_S = 6.0

settings: GatewatchSettings = load_settings()
check_exposure(settings)
store = Store(settings)


class GatewatchApp(faust.App):
    """``faust.App`` with the fetch-wait override and the store's life cycle."""

    #: Consumer fetch wait (ms) applied by :class:`streams.fetch_wait.FastFetchConsumerThread`.
    fetch_max_wait_ms: int = settings.fetch_max_wait_ms

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        if url.scheme not in ("kafka", "aiokafka"):
            return super()._new_transport()
        return FastFetchTransport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        await store.open()  # before the consumer starts: no traffic waits for chDB start-up

    async def on_started(self) -> None:
        await super().on_started()
        tune_collector()  # garbage collections skip what start-up built (streams/heap.py)

    #: Called (in order) when the app stops, before Faust stops its consumer and producer:
    #: services outside Faust's agents (the request consumer) flush and commit here.
    before_stop: list[Callable[[], Awaitable[None]]] = []

    async def on_stop(self) -> None:
        for stop in self.before_stop:
            await stop()
        await super().on_stop()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await store.close()  # children (agents, web) have stopped by now


app = GatewatchApp(
    "gatewatch",
    broker=f"kafka://{settings.bootstrap_servers}",
    web_host=settings.worker_web_host,
    web_bind=settings.worker_web_host,
    web_port=settings.worker_web_port,
    web_application_options={"middlewares": [token_middleware(settings.admin_token)]},
    broker_session_timeout=SESSION_TIMEOUT_S,
    broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
    broker_rebalance_timeout=REBALANCE_TIMEOUT_S,
    consumer_auto_offset_reset="earliest",
    topic_allow_declare=False,
    topic_disable_leader=True,
    datadir=str(settings.chdb_path.parent / "faust"),
)
