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
without the restart. Within about 1 %: the spike's baseline, an EWMA over every
``spike_bucket_s`` bucket since the start (``spike_ewma_lambda`` = 0.1). It is
rebuilt from the replayed buckets only, so the replay covers the buckets that
carry :data:`SPIKE_WEIGHT_REBUILT` (99 %) of its weight (what is lost is 0.9^44
of the baseline as it stood when the span starts) — 44 buckets of 60 s at
the defaults, where the aggregate windows alone (20 buckets) carried 88 % and
left the baseline low for a while after a restart. Logins are a small share
of the traffic, so the longer replay is cheap.
"""

from __future__ import annotations

import math

from detectors.credential_stuffing import CredentialStuffingDetector
from streams.app import settings
from streams.merged import EventStage

_cfg = settings.credential_stuffing
#: Share of the spike baseline's weight the replay rebuilds (the older buckets' share is lost).
SPIKE_WEIGHT_REBUILT = 0.99


def spike_replay_s(bucket_s: float, ewma_lambda: float, rebuilt: float = SPIKE_WEIGHT_REBUILT) -> float:
    """Seconds of buckets that carry ``rebuilt`` of an EWMA's weight: the last ``n``
    buckets carry ``1 - (1 - λ)^n`` of it, so ``n = ceil(ln(1 - rebuilt) / ln(1 - λ))``
    (44 buckets at λ = 0.1 for 99 %); one bucket when λ = 1."""
    if ewma_lambda >= 1.0:
        return bucket_s
    return bucket_s * math.ceil(math.log(1.0 - rebuilt) / math.log(1.0 - ewma_lambda))


#: Seconds of event time replayed: the longest window and the quiet period after a detection,
#: or the spike baseline's buckets if longer.
REPLAY_S = max(max(_cfg.window_s, _cfg.aggregate_window_s) + _cfg.ban_ttl_s,
               spike_replay_s(_cfg.spike_bucket_s, _cfg.spike_ewma_lambda))


def stages() -> list[EventStage]:
    """The aggregate rules' detector for the logins partition."""
    return [EventStage(CredentialStuffingDetector.from_settings(
        _cfg, rules=("prefix", "asn", "username", "global")), "logins")]
