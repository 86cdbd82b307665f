"""The worker's own consumers, started together once the app runs: the request topic's
(:mod:`streams.requests_consumer`) and one per re-keyed topic
(:mod:`streams.rekeyed_consumer`), each with the detectors of that topic and its
replay span (the longest of theirs).

Start-up order: the behaviour model file is read (on a thread: importing skops and
loading a model take 0.4–1.5 s, which must not stall the loop in the middle of
traffic) and the decision policy is seeded from the decisions topic
(:func:`streams.decide.seed_policy`), so that nothing a consumer replays or
redelivers decides twice; then they join their groups, all at once (a join
takes a few seconds on Tansu). They stop (finish, commit) before Faust stops
its producer, the request consumer first, so that what it re-keys last can be
read by the others at their next start.
"""

from __future__ import annotations

import asyncio

from streams import detect_behaviour, detect_geo, detect_latency, detect_logins
from streams.app import app, settings
from streams.checkpointed_consumer import CheckpointedConsumer
from streams.decide import seed_policy
from streams.rekey import unpack_events, unpack_principal, unpack_samples
from streams.rekeyed_consumer import RekeyedConsumer
from streams.requests_consumer import requests_consumer

by_principal = RekeyedConsumer(
    "by_principal", settings.topic_requests_by_principal, unpack_principal,
    lambda: detect_geo.stages() + detect_behaviour.stages(),
    max(detect_geo.REPLAY_S, detect_behaviour.REPLAY_S),
    on_new_partitions=detect_geo.load_history)
logins = RekeyedConsumer("logins", settings.topic_logins, unpack_events, detect_logins.stages,
                         detect_logins.REPLAY_S)
by_route = RekeyedConsumer("by_route", settings.topic_requests_by_route, unpack_samples,
                           detect_latency.stages, detect_latency.REPLAY_S,
                           on_new_partitions=detect_latency.load_state)

#: Every consumer, in start and stop order.
consumers: list[CheckpointedConsumer] = [requests_consumer, by_principal, logins, by_route]
rekeyed_consumers: list[RekeyedConsumer] = [by_principal, logins, by_route]
app.before_stop.extend(consumer.stop for consumer in consumers)


@app.task
async def run_consumers() -> None:
    """Load the behaviour model, seed the policy, start every consumer (once the app and its
    producer run)."""
    await asyncio.to_thread(detect_behaviour.worker_model)
    await seed_policy()
    await asyncio.gather(*(consumer.start() for consumer in consumers))
