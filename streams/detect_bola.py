"""Agent: BOLA enumeration over requests re-keyed by principal (``topic_requests_by_principal``),
so each principal's windows live on one partition and one worker. The detector's
``now`` is the low watermark of the merged sources (:mod:`streams.merged`)."""

from __future__ import annotations

from detectors.bola import BolaDetector
from streams.app import app, settings
from streams.decide import publish
from streams.merged import MergedInput
from streams.topics import by_principal_topic

detector = BolaDetector.from_settings(settings.bola)
by_principal = MergedInput("by_principal")


@app.agent(by_principal_topic)
async def detect_bola(stream):  # type: ignore[no-untyped-def]
    """Consume batches of principals' object requests; emit BOLA detections and bans."""
    async for batch in stream.take_events(settings.detector_batch_size,
                                          within=settings.detector_batch_within_s):
        await publish(by_principal.detect(batch, detector))
