"""BOLA enumeration over requests re-keyed by principal (``topic_requests_by_principal``),
so each principal's windows live on one partition and one worker: one detector per
by-principal partition (:mod:`streams.rekeyed_consumer`). The detector's ``now`` is
the partition's low watermark (:mod:`streams.merged`).

After a restart (or a partition moving to another worker) the partition's last
:data:`REPLAY_S` seconds are replayed into a fresh detector. Exact: every
route window (``bola.window_s``, 300 s), the runs of sequential ids, and the
quiet period of a principal that fired (``bola.ban_ttl_s``, 600 s — its
trigger's whole window is inside the replay, so the replay fires again,
silently). Not exact: the ids *given* to a principal (2xx answers) more than
:data:`REPLAY_S` ago (kept up to ``bola.state_ttl_s``, 3600 s, live), so after a
restart a 404 on such an old id of its own counts as refused.
"""

from __future__ import annotations

from detectors.bola import BolaDetector
from streams.app import settings
from streams.merged import EventStage

#: Seconds of event time replayed for BOLA: a window and the quiet period after a detection.
REPLAY_S = settings.bola.window_s + settings.bola.ban_ttl_s


def stages() -> list[EventStage]:
    """A BOLA detector for one by-principal partition."""
    return [EventStage(BolaDetector.from_settings(settings.bola), "bola")]
