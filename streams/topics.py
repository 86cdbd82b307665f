"""The worker's Faust topics (the request topic itself is read by
:mod:`streams.requests_consumer`). Values are raw bytes (``value_serializer='raw'``): records
are parsed with :mod:`gatewatch.events` so that a malformed message is counted
and skipped instead of crashing an agent.

Requests are keyed by principal, or by client IP for login attempts and anonymous
callers (the gateway does it: :func:`gatewatch.events.request_key`), so each key's
events are on one partition, in order. The worker re-keys what other detectors need
(:mod:`streams.rekey`): batches of a principal's requests (geo, behaviour, its logins
included), latency samples by route (latency), and every login attempt on one
partition (the aggregate credential-stuffing rules).

Decisions are signed by :data:`decision_signer` and read only when
:data:`decision_verifier` accepts their signature (:mod:`gatewatch.signing`):
see :func:`verified_decisions`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from gatewatch.events import MalformedRecord
from gatewatch.signing import DecisionSigner, DecisionVerifier
from streams import counters
from streams.app import app, settings

log = logging.getLogger(__name__)
T = TypeVar("T")

detections_topic = app.topic(settings.topic_detections, key_serializer="raw", value_serializer="raw")
decisions_topic = app.topic(settings.topic_decisions, key_serializer="raw", value_serializer="raw")
by_principal_topic = app.topic(settings.topic_requests_by_principal, key_serializer="raw",
                               value_serializer="raw")
by_route_topic = app.topic(settings.topic_requests_by_route, key_serializer="raw", value_serializer="raw")
logins_topic = app.topic(settings.topic_logins, key_serializer="raw", value_serializer="raw")
checkpoints_topic = app.topic(settings.topic_checkpoints, key_serializer="raw", value_serializer="raw")

decision_signer = DecisionSigner.from_settings(settings)
decision_verifier = DecisionVerifier.from_settings(settings)
_rejected: Counter[str] = Counter()   # for log throttling; the figures are in streams.counters


def parse_or_count(parser: Callable[[bytes], T], value: bytes | None, counter: str) -> T | None:
    """``parser(value)``, or None after counting ``counter`` when the message is malformed.

    A null value (tombstone) is not malformed: it returns None without counting.
    """
    if value is None:
        return None
    try:
        return parser(value)
    except (MalformedRecord, ValueError, TypeError) as exc:
        counters.incr(counter)
        log.warning("skipped malformed message (%s): %s", counter, str(exc)[:200])
        return None


def verified_decisions(events: Iterable[Any], count: bool = True) -> list[Any]:
    """The Faust events of the decisions topic whose signature is accepted, in order.

    The others are dropped and, with ``count``, counted as ``unsigned_decisions``
    (no signature) or ``bad_signature_decisions`` (one that does not verify) and
    logged (the first ten of each, then every thousandth). Only one reader of the
    topic counts (the sink), so the figures are not doubled by the alert agent.
    """
    out = []
    for event in events:
        message = event.message
        reason = decision_verifier.rejects(message.key, message.value, message.headers)
        if reason is None:
            out.append(event)
            continue
        if count:
            counters.incr(f"{reason}_decisions")
            _rejected[reason] += 1
            n = _rejected[reason]
            if n <= 10 or n % 1000 == 0:
                log.warning("ignored a decision message with %s (key %r; %d so far)",
                            "no signature" if reason == "unsigned" else "a bad signature", message.key, n)
    return out
