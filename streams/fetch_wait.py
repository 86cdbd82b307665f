"""The one place where Faust's consumer fetch wait is overridden.

Faust 0.15.3 creates its worker consumer with a hard-coded
``fetch_max_wait_ms=1500`` (``faust/transport/drivers/aiokafka.py``,
``AIOKafkaConsumerThread._create_worker_consumer``) and no setting changes it.
Tansu quirk (DESIGN.md): the broker does not wake a waiting fetch when data
arrives, so every consumer waits up to its ``fetch_max_wait_ms`` — a median
~360 ms on the decision path at 1500 ms, ~2 ms at 10–50 ms.

Fix: a consumer thread whose ``_create_worker_consumer`` builds the aiokafka
consumer exactly as Faust does, then sets its ``_fetch_max_wait_ms`` before
``start()`` (aiokafka copies that attribute into its ``Fetcher`` at start).
:class:`FastFetchTransport` wires it in; :class:`streams.app.GatewatchApp`
uses that transport for ``kafka://`` URLs. :func:`live_fetch_max_wait_ms`
reads the value the running fetcher really uses (health endpoint, tests).
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

#: Used when the app does not say (aiokafka's own default).
DEFAULT_FETCH_MAX_WAIT_MS = 500


class FastFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with ``fetch_max_wait_ms`` taken from
    ``app.fetch_max_wait_ms`` (milliseconds) instead of the fixed 1500."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = int(getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS))
        if wait_ms < 0:
            raise ValueError(f"fetch_max_wait_ms must be >= 0, got {wait_ms}")
        consumer._fetch_max_wait_ms = wait_ms  # read by AIOKafkaConsumer.start() -> Fetcher
        return consumer


class FastFetchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, running :class:`FastFetchConsumerThread`."""

    def _new_consumer_thread(self) -> FastFetchConsumerThread:
        return FastFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FastFetchTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport whose consumers use :class:`FastFetchConsumer`."""

    Consumer = FastFetchConsumer


def live_fetch_max_wait_ms(app: Any) -> int | None:
    """The ``fetch_max_wait_ms`` (ms) of the running aiokafka fetcher of ``app``,
    or None before the consumer has started."""
    try:
        fetcher = app.consumer._thread._consumer._fetcher
    except AttributeError:
        return None
    return None if fetcher is None else int(fetcher._fetch_max_wait_ms)
