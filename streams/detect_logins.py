"""Agent: the aggregate credential-stuffing rules — per prefix, per ASN, per username
and the global failed-login spike — over every login attempt.

The request agent sends login attempts to ``topic_logins``, which has one
partition: one worker holds these windows and sees every login, however many
workers share the request stream. (The per-IP rule runs on the request stream
itself, :mod:`streams.detect_requests`; this detector tracks per-IP windows too,
silently, to leave IPs that fired on their own out of the prefix/ASN counts.)
The detector's ``now`` is the low watermark of the merged sources
(:mod:`streams.merged`).
"""

from __future__ import annotations

from detectors.credential_stuffing import CredentialStuffingDetector
from streams.app import app, settings
from streams.decide import publish
from streams.merged import MergedInput
from streams.topics import logins_topic

detector = CredentialStuffingDetector.from_settings(
    settings.credential_stuffing, rules=("prefix", "asn", "username", "global"))
logins = MergedInput("logins")


@app.agent(logins_topic)
async def detect_logins(stream):  # type: ignore[no-untyped-def]
    """Consume batches of login events; emit prefix/ASN/username/global detections."""
    async for batch in stream.take_events(settings.detector_batch_size,
                                          within=settings.detector_batch_within_s):
        await publish(logins.detect(batch, detector))
