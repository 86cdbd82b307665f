"""Behaviour outliers per principal (:mod:`detectors.behaviour`) over requests re-keyed
by principal (``topic_requests_by_principal``), so each principal's windows live on one
worker: one detector per by-principal partition (:mod:`streams.rekeyed_consumer`).

The model file (``settings.behaviour.model_path``, written by ``gatewatch
train``) is read once, at start-up before the consumers join
(:mod:`streams.consumers`). With no file it is
logged once and nothing is detected; a file that cannot be used (untrusted
types, another feature set, unreadable) is logged the same way.
Detections go through :func:`streams.decide.publish`: the decision policy's
``behaviour`` settings are in shadow by default, so they are recorded with
``evidence["policy"] = "shadow"`` and no decision is issued.

Windows close on event time: each event is counted with the watermark of its
partition (late ones are dropped, ``behaviour_late_events``), and after each
batch the windows that ended before the partition's new watermark are judged —
the request consumer's once-a-second progress messages move it on, so a
principal that went quiet is judged too.

After a restart the last :data:`REPLAY_S` seconds of the partition are replayed
(more, as the other by-principal detectors need it). Exact: the open windows.
Not exact: the countries each principal was seen in before the replayed span
(kept up to ``behaviour.state_ttl_s`` live), so the new-country feature can be 1
after a restart for a country seen earlier.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime

from detectors.behaviour import BehaviourDetector
from detectors.behaviour_features import WINDOW_S
from detectors.behaviour_model import BehaviourModel
from gatewatch.events import Detection, ObservedRequest
from gatewatch.model_file import ModelFileError, ModelFileMissing, load_model_file, version_mismatch
from gatewatch.settings import BehaviourSettings
from streams import counters
from streams.app import settings

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


#: Seconds of event time replayed for behaviour: a window and its allowed lateness.
REPLAY_S = WINDOW_S + settings.behaviour.allowed_lateness_s


class BehaviourStage:
    """The detector as a stage: a message's events are only counted in their windows (late
    ones dropped); windows are judged when the partition's watermark has passed them."""

    def __init__(self, detector: BehaviourDetector) -> None:
        self.detector = detector

    def process(self, items: list[ObservedRequest], now: datetime) -> list[Detection]:
        for event in items:
            self.detector.add(event, now)
        return []

    def advance(self, watermark: datetime) -> list[Detection]:
        late = self.detector.late_events
        found = self.detector.advance(watermark)
        if self.detector.late_events > late:
            counters.incr("behaviour_late_events", self.detector.late_events - late)
        return found


@functools.cache
def worker_model() -> BehaviourModel | None:
    """This worker's model, loaded (and logged) once: at start-up, on a thread, after Faust has
    set up logging (:func:`streams.consumers.run_consumers`)."""
    detector = load_detector(settings.behaviour)
    return None if detector is None else detector.model


def stages() -> list[BehaviourStage]:
    """The behaviour detector of one by-principal partition (the model is shared); none
    without a usable model file."""
    model = worker_model()
    if model is None:
        return []
    return [BehaviourStage(BehaviourDetector.from_settings(model, settings.behaviour))]
