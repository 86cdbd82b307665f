"""BOLA enumeration per principal (or per address, for anonymous callers), judged on the
request topic itself: the gateway keys a principal's requests by principal
(:func:`gatewatch.events.request_key`), so each principal's windows live on one request
partition and one worker, and the request consumer (:mod:`streams.detect_requests`)
runs one detector per partition it reads, with ``now`` the event's own ``ts``. No
re-keying hop lies on BOLA's decision path: the gateway's event, the worker's decision,
and the gateway's 403.

Login attempts stay keyed by address (the per-IP login windows), so they are not judged
here: a login route is a credential-stuffing concern.

After a restart (or a partition moving to another worker) the partition's last
:data:`REPLAY_S` seconds are replayed into a fresh detector (:mod:`streams.checkpoints`).
Exact: every route window (``bola.window_s``, 300 s), the runs of sequential ids, and the
quiet period of a principal that fired (``bola.ban_ttl_s``, 600 s — its trigger's whole
window is inside the replay, so the replay fires again, silently). Not exact: the ids
*given* to a principal (2xx answers) more than :data:`REPLAY_S` ago (kept up to
``bola.state_ttl_s``, 3600 s, live), so after a restart a 404 on such an old id of its
own counts as refused.
"""

from __future__ import annotations

from detectors.bola import BolaDetector
from streams.app import settings

#: Seconds of event time replayed for BOLA: a window and the quiet period after a detection.
REPLAY_S = settings.bola.window_s + settings.bola.ban_ttl_s


def detector() -> BolaDetector:
    """A BOLA detector for one request partition, from ``settings.bola``."""
    return BolaDetector.from_settings(settings.bola)
