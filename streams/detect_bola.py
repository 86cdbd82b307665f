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
window is inside the replay, so the replay fires again, silently).

The ids *given* to a caller (2xx answers) before the replay span come back from the
store: when partitions new to this worker are assigned, :func:`load_given` reads the
paths of each caller's 2xx answers over ``bola.state_ttl_s`` (3600 s, how long an idle
caller is kept live) up to :data:`REPLAY_S` before the current time (named query
``bola_given``: the latest 10,000 per principal, or per address of an anonymous caller),
and a partition's fresh detector is given those of the callers keyed to it
(:func:`detector`), oldest first, before its replay. So a 404 on an old id of a caller's
own is still not a refusal after a restart. Not exact: a caller active without a pause
longer than ``state_ttl_s`` keeps older given ids live (up to ``known_ids_max``), which
are not restored; the cut at :data:`REPLAY_S` before the wall clock, not before the
replay's first event, may give an id a little early (a 404 just before its 2xx in the
replay is then not a refusal) after a long outage. Store down or slow:
counted as ``bola_given_errors``, the detectors start from the replay alone.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import datetime, timedelta, timezone

from detectors.bola import BolaDetector
from gatewatch.events import caller_key
from streams import counters
from streams.app import settings, store
from streams.rekey import partition_for

#: Seconds of event time replayed for BOLA: a window and the quiet period after a detection.
REPLAY_S = settings.bola.window_s + settings.bola.ban_ttl_s
#: Longest wait for the store's answer at an assignment, seconds.
STORE_READ_TIMEOUT_S = 20.0

log = logging.getLogger(__name__)

#: Request partition -> ids given before the replay span, ``(last_s, scope, value, route, path)``
#: (scope ``principal`` or ``ip``, as the detector keys callers), oldest first, as of the last
#: :func:`load_given`; taken by :func:`detector`.
_given: dict[int, list[tuple[float, str, str, str, str]]] = {}


async def load_given(partitions: int, wanted: list[int], now: datetime | None = None) -> int:
    """Read from the store the paths of 2xx answers to each caller (a principal, or the
    address of an anonymous caller) over the ``bola.state_ttl_s`` seconds up to
    :data:`REPLAY_S` before ``now`` (default: the current time), sorted by the request
    partition (of ``partitions``) its key picks
    (:func:`gatewatch.events.request_key`); those of the ``wanted`` partitions (new to
    this worker) are kept. Returns how many rows were read; on a store error nothing is
    restored (``bola_given_errors``)."""
    global _given
    until = (now or datetime.now(timezone.utc)) - timedelta(seconds=REPLAY_S)
    span_s = max(0.0, settings.bola.state_ttl_s - REPLAY_S)
    try:
        rows = await store.query_last("bola_given", span_s, STORE_READ_TIMEOUT_S, until) if span_s else []
    except Exception as exc:   # the store down or failing: the replay alone (module docstring)
        counters.incr("bola_given_errors")
        log.warning("BOLA given ids not read from the store (%s: %s): ids given before the replay "
                    "span count as never given", type(exc).__name__, exc)
        _given = {}
        return 0
    given: dict[int, list[tuple[float, str, str, str, str]]] = {}
    for scope, value, route, path, last_s in rows:
        principal, address = (str(value), "") if scope == "principal" else ("", _address(str(value)))
        partition = partition_for(caller_key(principal, address), partitions)
        if partition not in wanted:
            continue
        given.setdefault(partition, []).append((float(last_s), str(scope), principal or address, str(route),
                                                str(path)))
    for items in given.values():
        items.sort()
    _given = given
    counters.incr("bola_given_loads")
    log.info("BOLA: %d given paths read from the store; %d callers kept for partitions %s", len(rows),
             len({(scope, value) for items in given.values() for _, scope, value, _, _ in items}),
             sorted(wanted))
    return len(rows)


def detector(partition: int) -> BolaDetector:
    """A BOLA detector for request partition ``partition``, from ``settings.bola``, given
    the ids :func:`load_given` read for its callers (taken: a later detector of the
    partition starts from the next load)."""
    det = BolaDetector.from_settings(settings.bola)
    for last_s, scope, value, route, path in _given.pop(partition, ()):
        det.give(scope, value, path, route, datetime.fromtimestamp(last_s, timezone.utc))
    return det


def _address(stored: str) -> str:
    """The event's address text of a stored ``client_ip`` (IPv6 text, IPv4 clients
    IPv4-mapped): IPv4 dotted, IPv6 RFC 5952, as the gateway writes it
    (:func:`inline.client_identity.canonical`)."""
    ip = ipaddress.ip_address(stored)
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)

