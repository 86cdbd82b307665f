"""Alerts for detections and decisions: Alertmanager v2 API, or a generic webhook.

Each detection and each decision becomes one alert (Alertmanager API v2,
``POST /api/v2/alerts``, a JSON list of ``{labels, annotations, startsAt,
endsAt, generatorURL}``):

- labels (identity and routing): ``alertname`` (``GatewatchDecision`` or
  ``GatewatchDetection``), ``detector``, ``scope``, ``value``, ``severity``,
  and ``action`` for decisions;
- annotations (for people): ``summary``, ``evidence`` (JSON, cut at
  :data:`MAX_EVIDENCE` bytes) and ``explain`` — the ``gatewatch explain``
  command that answers "why";
- ``endsAt``: a decision's alert resolves when the decision expires (or at
  once when it is deleted: the tombstone sends ``endsAt = now``); a
  detection's alert after ``detection_resolve_s``; a latency ``recovery``
  detection resolves the matching regression alert.

Alertmanager identifies an alert by its label set, so a renewed decision
for the same scope and value updates one alert instead of raising another.
The webhook sink posts ``{"version": "gatewatch/1", "alerts": [...]}`` with
the same alert objects. Sending retries with exponential backoff and gives
up after ``attempts`` (counted): alerting never blocks detection.

Reference: Prometheus Alertmanager API v2 (OpenAPI ``api/v2/openapi.yaml``),
"Alertmanager clients" in the Prometheus documentation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from gatewatch.events import Decision, Detection

logger = logging.getLogger(__name__)

#: Longest evidence annotation, bytes of JSON.
MAX_EVIDENCE = 2000


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _evidence(evidence: dict[str, Any]) -> str:
    text = json.dumps(evidence, sort_keys=True, default=str, separators=(",", ":"))
    return text if len(text) <= MAX_EVIDENCE else text[: MAX_EVIDENCE - 3] + "..."


def decision_alert(decision: Decision, severity: str = "high", now: datetime | None = None) -> dict[str, Any]:
    """The alert of ``decision``; it resolves at ``expires_at`` (or now, if that is past)."""
    now = now or datetime.now(timezone.utc)
    return {
        "labels": {"alertname": "GatewatchDecision", "detector": decision.detector or "manual",
                   "scope": decision.scope, "value": decision.value, "action": decision.action,
                   "severity": severity},
        "annotations": {
            "summary": f"{decision.action} {decision.scope} {decision.value} until "
                       f"{_iso(decision.expires_at)}: {decision.reason}",
            "evidence": _evidence(decision.evidence),
            "explain": f"gatewatch explain {decision.id}",
            "decision_id": decision.id,
        },
        "startsAt": _iso(decision.created_at),
        "endsAt": _iso(max(decision.expires_at, now)),
    }


def resolved_decision_alert(last: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """``last`` (an alert from :func:`decision_alert`) resolved now: for a deleted decision."""
    return {**last, "endsAt": _iso(now or datetime.now(timezone.utc))}


def detection_alert(detection: Detection, resolve_after_s: float) -> dict[str, Any]:
    """The alert of ``detection``; it resolves ``resolve_after_s`` seconds after the detection,
    at once for a recovery (``evidence.kind == "recovery"``), which shares the labels of
    the alert it ends."""
    recovery = detection.evidence.get("kind") == "recovery"
    ends = detection.ts if recovery else detection.ts + timedelta(seconds=resolve_after_s)
    return {
        "labels": {"alertname": "GatewatchDetection", "detector": detection.detector,
                   "scope": detection.scope, "value": detection.value,
                   "severity": detection.evidence.get("regression_severity", detection.severity)
                   if recovery else detection.severity},
        "annotations": {
            "summary": detection.summary or f"{detection.detector} on {detection.scope} {detection.value}",
            "evidence": _evidence({**detection.evidence, "sample_event_ids": detection.sample_event_ids}),
            "explain": f"gatewatch explain {detection.value}",
            "detection_id": detection.detection_id,
        },
        "startsAt": _iso(detection.ts),
        "endsAt": _iso(ends),
    }


@dataclass
class SenderStats:
    """Counters: alerts sent, batches that failed after every attempt, retries."""

    sent: int = 0
    failed: int = 0
    retries: int = 0


class AlertSender:
    """Posts alert batches to Alertmanager (``alertmanager_url``) or a webhook (``webhook_url``).

    ``attempts`` tries per batch with exponential backoff from ``backoff_s``
    (0.5 s, 1 s, 2 s …); each try has ``timeout_s``. Never raises on HTTP or
    network errors: it logs, counts and returns False.
    """

    def __init__(self, alertmanager_url: str | None = None, webhook_url: str | None = None,
                 timeout_s: float = 5.0, attempts: int = 4, backoff_s: float = 0.5) -> None:
        if not alertmanager_url and not webhook_url:
            raise ValueError("AlertSender needs alertmanager_url or webhook_url")
        self.alertmanager_url = alertmanager_url.rstrip("/") if alertmanager_url else None
        self.webhook_url = webhook_url
        self.attempts, self.backoff_s = attempts, backoff_s
        self.stats = SenderStats()
        self._client = httpx.AsyncClient(timeout=timeout_s)

    def _request(self, alerts: list[dict[str, Any]]) -> tuple[str, Any]:
        if self.alertmanager_url:
            return f"{self.alertmanager_url}/api/v2/alerts", alerts
        return str(self.webhook_url), {"version": "gatewatch/1", "alerts": alerts}

    async def send(self, alerts: list[dict[str, Any]]) -> bool:
        """Post ``alerts``; True once the receiver answered 2xx."""
        if not alerts:
            return True
        url, body = self._request(alerts)
        for attempt in range(self.attempts):
            try:
                resp = await self._client.post(url, json=body)
                if resp.is_success:
                    self.stats.sent += len(alerts)
                    return True
                problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < self.attempts:
                self.stats.retries += 1
                await asyncio.sleep(self.backoff_s * 2 ** attempt)
        self.stats.failed += 1
        logger.warning("alerts not delivered to %s after %d attempts: %s", url, self.attempts, problem)
        return False

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
