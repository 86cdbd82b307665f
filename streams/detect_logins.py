"""The aggregate credential-stuffing rules — per prefix, per ASN, per username and the
global failed-login spike — over every login attempt.

The request consumer sends login attempts to ``topic_logins``, which has one
partition: one worker holds these windows and sees every login, however many
workers share the request stream (:mod:`streams.rekeyed_consumer` reads it).
(The per-IP rule runs on the request stream itself, :mod:`streams.detect_requests`;
this detector tracks per-IP windows too, silently, to leave IPs that fired on
their own out of the prefix/ASN counts.) The detector's ``now`` is the low
watermark of the merged sources (:mod:`streams.merged`).

After a restart the last :data:`REPLAY_S` seconds of logins are replayed into a
fresh detector. Exact: the per-IP, prefix, ASN and username windows
(``credential_stuffing.window_s``, 60 s; ``aggregate_window_s``, 600 s) and the
quiet periods of the keys that fired (``ban_ttl_s``, 600 s, with the trigger's
window inside the replay), so a threshold is crossed at the same login as
without the restart. Not exact: the spike's baseline, an EWMA over every
``spike_bucket_s`` bucket since the start (``spike_ewma_lambda`` = 0.1): it is
rebuilt from the replayed buckets only (20 buckets of 60 s carry 88 % of its
weight), so it can be lower for a while after a restart, which can declare a
spike earlier (only where the baseline is above a third of
``spike_min_failures``: below that the floor decides).
"""

from __future__ import annotations

from detectors.credential_stuffing import CredentialStuffingDetector
from streams.app import settings
from streams.merged import EventStage

_cfg = settings.credential_stuffing
#: Seconds of event time replayed: the longest window and the quiet period after a detection.
REPLAY_S = max(_cfg.window_s, _cfg.aggregate_window_s) + _cfg.ban_ttl_s


def stages() -> list[EventStage]:
    """The aggregate rules' detector for the logins partition."""
    return [EventStage(CredentialStuffingDetector.from_settings(
        _cfg, rules=("prefix", "asn", "username", "global")), "logins")]
