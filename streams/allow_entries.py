"""The worker's allow entries (``gatewatch allowlist``), followed from the decisions topic.

The decision policy (:mod:`streams.decide`) must not issue a decision against an
allow-listed value, on whichever worker the detection happens; so every worker
reads the whole topic without a consumer group (:func:`gatewatch.decision_follow.follow`),
in a background task, and keeps the allow entries — messages keyed
``allow:scope:value`` — in :data:`allow_list`. Decisions (the other keys) are
not kept here: the sink stores them and the policy tracks its own.

Only messages whose signature verifies (:mod:`gatewatch.signing`) count: an
unsigned or forged allow entry would let an attacker exempt itself. They are
dropped here without counting (the sink counts them, ``unsigned_decisions`` and
``bad_signature_decisions``); malformed allow entries are counted
(``malformed_allow_entries``), applied ones too (``allow_entries_applied``).

An entry is seen within about ``settings.fetch_max_wait_ms`` of its
publication; a detection decided before that can still get a decision, which
the gateway does not enforce on the allow-listed value anyway.
"""

from __future__ import annotations

import logging
import time

from gatewatch.decision_follow import follow
from gatewatch.decision_store import DecisionStore
from gatewatch.events import ALLOW_KEY_PREFIX, MalformedRecord
from gatewatch.signing import Headers
from streams import counters
from streams.app import app, settings
from streams.topics import decision_verifier

log = logging.getLogger(__name__)
_ALLOW_KEY = ALLOW_KEY_PREFIX.encode()

#: Active allow entries of the whole topic (action ``allow``; times in Unix seconds).
allow_list = DecisionStore(settings.decision_prefix_v4, settings.decision_prefix_v6, allow=True)


def apply_message(store: DecisionStore, key: bytes | None, value: bytes | None, headers: Headers,
                  now: float) -> str | None:
    """Apply one decisions-topic message to ``store`` at Unix time ``now`` if it is an allow
    entry (or its tombstone) with a valid signature. Returns ``"set"``, ``"deleted"``, or
    None when the message was not applied (another key, no valid signature, malformed —
    counted)."""
    if key is None or not key.startswith(_ALLOW_KEY):
        return None
    if decision_verifier.rejects(key, value, headers) is not None:
        return None
    try:
        result = store.apply(key, value, now)
    except MalformedRecord as exc:
        counters.incr("malformed_allow_entries")
        log.warning("skipped a malformed allow entry (key %r): %s", key, exc)
        return None
    counters.incr("allow_entries_applied")
    return result


@app.task
async def follow_allow_entries() -> None:
    """Read the decisions topic from the beginning, then follow it, keeping :data:`allow_list`."""
    async for records, _ in follow(settings.bootstrap_servers, settings.topic_decisions,
                                   settings.fetch_max_wait_ms, "gatewatch-worker-allow-entries",
                                   on_retry=lambda exc: counters.incr("allow_feed_retries")):
        for record in records:
            apply_message(allow_list, record.key, record.value, record.headers, time.time())
