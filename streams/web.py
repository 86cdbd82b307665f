"""The worker's read API (Faust web views). The worker owns the chDB store, so
other processes (CLI, demo, tests) read through here.

* ``GET /gatewatch/health/`` → ``{"ready": bool, "store_open": bool,
  "assigned_partitions": int, "request_partitions": [int], "sink_pending_events": int,
  "requests_committed": int, "rekeyed": {kind: {"partitions": [int], "committed": int}},
  "store_spool_bytes": int, "fetch_max_wait_ms": int|null, "store": {...},
  "counters": {...}}``; ``ready`` means the store is open, the Faust consumer has had
  its first assignment (possibly of nothing: another worker may hold the
  detections and decisions partitions) and every consumer of
  :mod:`streams.consumers` has joined its group. ``*committed``: the sum of a consumer's committed offsets (messages).
* ``GET /gatewatch/query/{name}/?param=value`` → ``{"columns": [...], "rows": [[...]]}``
  from :func:`storage.queries.run_query`, run in the store process;
  unknown name → 404, bad parameters → 400, store not open → 503, all JSON
  ``{"error": ..., ...}``.
"""

from __future__ import annotations

import logging
from typing import Any

from storage.queries import QUERIES, QueryParamError, UnknownQuery
from streams import counters
from streams.app import app, store
from streams.fetch_wait import live_fetch_max_wait_ms
from streams.consumers import consumers, rekeyed_consumers, requests_consumer
from streams.sink import store_spool
from streams.store import StoreNotReady

log = logging.getLogger(__name__)


def assigned_partitions() -> int:
    """Number of topic partitions currently assigned to this worker's Faust consumer
    (0 before the join)."""
    try:
        return len(app.consumer.assignment())
    except Exception:  # consumer not started yet
        return 0


_faust_joined = False


@app.on_partitions_assigned.connect
async def _faust_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
    global _faust_joined
    _faust_joined = True


def health_payload() -> dict[str, Any]:
    """The body of ``/gatewatch/health/``."""
    assigned = assigned_partitions()
    return {
        "ready": store.ready and _faust_joined and all(c.joined for c in consumers),
        "store_open": store.ready,
        "assigned_partitions": assigned + sum(len(c.assigned) for c in consumers),
        "request_partitions": sorted(requests_consumer.assigned),
        "sink_pending_events": requests_consumer.sink.pending,
        "requests_committed": requests_consumer.committed_total(),
        "rekeyed": {c.kind: c.describe() for c in rekeyed_consumers},
        "store_spool_bytes": store_spool().pending_bytes,
        "fetch_max_wait_ms": live_fetch_max_wait_ms(app),
        "store": store.describe(),
        "counters": counters.snapshot(),
    }


@app.page("/gatewatch/health/", name="gatewatch-health")
async def health(view, request):  # type: ignore[no-untyped-def]
    return view.json(health_payload())


@app.page("/gatewatch/query/{name}/", name="gatewatch-query")
async def query(view, request, name: str):  # type: ignore[no-untyped-def]
    params = {key: request.query.getall(key)[-1] for key in request.query.keys()}
    try:
        result = await store.query(name, params)
    except UnknownQuery:
        return view.json({"error": f"unknown query {name!r}", "queries": sorted(QUERIES)}, status=404)
    except QueryParamError as exc:
        return view.json({"error": str(exc), "query": name,
                          "params": {k: p.help for k, p in QUERIES[name].params.items()}}, status=400)
    except StoreNotReady as exc:
        return view.json({"error": str(exc)}, status=503)
    except Exception as exc:  # engine error: report, keep serving
        log.exception("query %s failed", name)
        return view.json({"error": f"query {name} failed: {exc}"}, status=500)
    return view.json(result)
