"""The fetch-wait override, in process: the consumer Faust builds gets the app's value.

(The running-worker check is in test_worker.py: the health endpoint reports the
value read from the live aiokafka fetcher.)
"""

from __future__ import annotations

import asyncio

from streams.app import GatewatchApp
from streams.fetch_wait import FastFetchConsumerThread, FastFetchTransport


def test_worker_consumer_is_built_with_the_app_fetch_wait() -> None:
    async def build() -> int:
        app = GatewatchApp("fetch-wait-test", broker="kafka://127.0.0.1:9", web_enabled=False)
        app.fetch_max_wait_ms = 23
        assert isinstance(app.transport, FastFetchTransport)
        thread = app.consumer._thread
        assert isinstance(thread, FastFetchConsumerThread)
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(build()) == 23
