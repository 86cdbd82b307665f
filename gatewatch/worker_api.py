"""Client of the worker's read-only HTTP API.

chDB lets one process own a data directory, and while the stack runs that
process is the worker; the CLI, the demo and the tests therefore read the
store through the worker: ``GET /gatewatch/query/{name}/?param=value`` runs one
of the named queries of ``storage/queries.py`` and answers
``{"columns": [...], "rows": [[...], ...]}``. When the worker is guarded by
``admin_token`` (:mod:`gatewatch.admin_auth`) the client sends it as a bearer token.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from gatewatch.admin_auth import auth_headers


class WorkerApiError(RuntimeError):
    """The worker's read API answered with an error or could not be reached."""


class WorkerAuthError(WorkerApiError):
    """The worker refused the request (HTTP 401): ``admin_token`` missing or wrong."""


AUTH_MESSAGE = "the worker refused the request (HTTP 401): admin_token (GATEWATCH_ADMIN_TOKEN) missing or wrong"


class WorkerApi:
    """Synchronous client for the worker at ``base_url`` (e.g. ``http://127.0.0.1:6066``),
    sending ``token`` (the settings' ``admin_token``) if given."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = auth_headers(token)

    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Run the named query; return its rows as dicts keyed by column name.

        Raises :class:`WorkerAuthError` when the worker wants another token,
        :class:`WorkerApiError` on another HTTP error or an unreachable worker.
        """
        url = f"{self.base_url}/gatewatch/query/{name}/"
        try:
            resp = httpx.get(url, params=params, headers=self.headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise WorkerApiError(f"worker unreachable at {url}: {exc}") from exc
        if resp.status_code == 401:
            raise WorkerAuthError(AUTH_MESSAGE)
        if resp.status_code != 200:
            raise WorkerApiError(f"query {name} failed: HTTP {resp.status_code} {resp.text[:200]}")
        body = resp.json()
        return [dict(zip(body["columns"], row)) for row in body["rows"]]

    def health(self) -> dict[str, Any]:
        """The worker's health document (``ready``, ``assigned_partitions``, ``counters``).
        Raises :class:`WorkerAuthError` (401) or :class:`WorkerApiError`."""
        try:
            resp = httpx.get(f"{self.base_url}/gatewatch/health/", headers=self.headers, timeout=self.timeout_s)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise WorkerApiError(f"worker health unavailable: {exc}") from exc
        if resp.status_code == 401:
            raise WorkerAuthError(AUTH_MESSAGE)
        return body

    def table_counts(self) -> dict[str, int]:
        """Deduplicated rows per table: ``{"requests": n, "detections": n, "decisions": n}``."""
        rows = self.query("table_counts")
        return {str(r["table"]): int(r["rows"]) for r in rows}

    def wait_for_requests(self, expected: int, timeout_s: float = 30.0) -> int:
        """Poll until the store holds at least ``expected`` requests or ``timeout_s`` passes;
        return the last count seen (the sink flushes in batches, so this waits for it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.table_counts().get("requests", 0)
            if seen >= expected or time.monotonic() > deadline:
                return seen
            time.sleep(0.25)
