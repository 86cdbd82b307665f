"""Agent: run the credential-stuffing detector over the request stream.

For every detection it sends the Detection JSON to ``topic_detections`` and the
ban Decision JSON to ``topic_decisions`` keyed ``scope:value`` (``decision.key()``),
which the gateway follows. The detector's clock is event time (``event.ts``).

State lives in this process (one detector for every partition it is assigned;
requests are keyed by IP, so one IP's events reach one worker). A restart or a
rebalance starts the moved windows empty — a bounded miss, never a false ban.
After firing, the detector ignores the IP for the ban TTL even if the ban is
lifted by hand earlier.

An unexpected error while handling one event is logged and counted
(``detector_errors``) and the loop goes on: a crashed agent would silently
stop all detection.
"""

from __future__ import annotations

import logging

from detectors.credential_stuffing import CredentialStuffingDetector
from detectors.decision_policy import decide
from gatewatch.events import RequestEvent, decision_key, parse_request_event
from streams import counters
from streams.app import app, settings
from streams.topics import decisions_topic, detections_topic, parse_or_count, requests_topic

log = logging.getLogger(__name__)

detector = CredentialStuffingDetector.from_settings(settings.credential_stuffing)


@app.agent(requests_topic)
async def detect_credential_stuffing(stream):  # type: ignore[no-untyped-def]
    """Consume request events; emit detections and ban decisions."""
    async for value in stream:
        event = parse_or_count(parse_request_event, value, "detector_skipped_malformed")
        if event is None:
            continue
        try:
            await _handle(event)
        except Exception:
            counters.incr("detector_errors")
            log.exception("credential-stuffing detector failed on event %s", event.event_id)


async def _handle(event: RequestEvent) -> None:
    for detection in detector.process(event, now=event.ts):
        decision = decide(detection, settings.credential_stuffing.ban_ttl_s)
        await detections_topic.send(key=decision_key(detection.scope, detection.value).encode(),
                                    value=detection.to_json())
        await decisions_topic.send(key=decision.key().encode(), value=decision.to_json())
        counters.incr("detections_emitted")
        counters.incr("decisions_emitted")
        log.warning("ban %s until %s: %s", decision.key(), decision.expires_at.isoformat(),
                    detection.summary)
