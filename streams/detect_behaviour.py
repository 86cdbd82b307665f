"""Agent: behaviour outliers per principal (:mod:`detectors.behaviour`) over requests re-keyed
by principal (``topic_requests_by_principal``), so each principal's windows live on one worker.

The model file (``settings.behaviour.model_path``, written by ``gatewatch
train``) is read once, when the agent starts. With no file the agent logs it
once and does nothing (it still reads its topic); a file it cannot use
(untrusted types, another feature set, unreadable) is logged the same way.
Detections go through :func:`streams.decide.publish`: the decision policy's
``behaviour`` settings are in shadow by default, so they are recorded with
``evidence["policy"] = "shadow"`` and no decision is issued.

Windows close on event time: each event is counted with the watermark of its
own partition (late ones are dropped, ``behaviour_late_events``), and after
each batch the windows that ended before the least watermark of every
partition this worker reads are judged — the request agent's once-a-second
progress messages move it on, so a principal that went quiet is judged too.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime

from detectors.behaviour import BehaviourDetector
from detectors.behaviour_model import BehaviourModel
from gatewatch.events import Detection, RequestEvent
from gatewatch.model_file import ModelFileError, ModelFileMissing, load_model_file, version_mismatch
from gatewatch.settings import BehaviourSettings
from streams import counters
from streams.app import app, settings
from streams.decide import publish
from streams.merged import MergedInput
from streams.topics import by_principal_topic

log = logging.getLogger(__name__)


def load_detector(cfg: BehaviourSettings) -> BehaviourDetector | None:
    """The detector with the model of ``cfg.model_path``, or None (logged) when there is no
    usable model file."""
    try:
        model = BehaviourModel.from_document(load_model_file(cfg.model_path))
        detector = BehaviourDetector.from_settings(model, cfg)
    except ModelFileMissing:
        log.info("behaviour model: no model file at %s; behaviour outliers off (gatewatch train writes it)",
                 cfg.model_path)
        return None
    except (ModelFileError, ValueError, KeyError, TypeError) as exc:
        log.warning("behaviour model: %s unusable, behaviour outliers off: %s", cfg.model_path, exc)
        return None
    warning = version_mismatch(model.to_document())
    if warning:
        log.warning("behaviour model: %s", warning)
    log.info("behaviour model: loaded %s (trained %s on %s windows), threshold %g, %s", cfg.model_path,
             model.trained_at, model.training.get("windows"), cfg.threshold,
             "shadow" if cfg.shadow else "deciding")
    return detector


class CountOnly:
    """``process(event, now)`` that only counts the event in its window (late ones dropped):
    windows are judged after the batch, on the least watermark (module docstring)."""

    def __init__(self, detector: BehaviourDetector) -> None:
        self.detector = detector

    def process(self, event: RequestEvent, now: datetime) -> list[Detection]:
        self.detector.add(event, now)
        return []


@functools.cache
def worker_detector() -> BehaviourDetector | None:
    """This worker's detector, loaded (and logged) once — when the agent first starts,
    after Faust has set up logging."""
    return load_detector(settings.behaviour)


by_principal_behaviour = MergedInput("by_principal_behaviour")


@app.agent(by_principal_topic)
async def detect_behaviour(stream):  # type: ignore[no-untyped-def]
    """Consume batches of principals' requests; emit behaviour-outlier detections."""
    detector = worker_detector()
    counting = CountOnly(detector) if detector is not None else None
    async for batch in stream.take_events(settings.detector_batch_size,
                                          within=settings.detector_batch_within_s):
        if counting is None:
            continue
        late = counting.detector.late_events
        found = by_principal_behaviour.detect(batch, counting)
        now = by_principal_behaviour.low_watermark()
        if now is not None:
            found += counting.detector.advance(now)
        if counting.detector.late_events > late:
            counters.incr("behaviour_late_events", counting.detector.late_events - late)
        await publish(found)
