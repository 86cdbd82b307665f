"""Agents: detections and decisions as alerts (Alertmanager v2 API or a webhook).

Off unless ``settings.alerting`` names a receiver. Detections below
``alerting.min_severity`` do not alert. A decision's alert resolves when
the decision expires; a tombstone (the decision deleted) resolves it at
once, using the last alert this worker sent for that ``scope:value``. Only
decision messages whose signature verifies (:mod:`gatewatch.signing`) alert
or resolve; the sink counts the others. Allow entries (``gatewatch allowlist``)
block no one and raise no alert.
Delivery failures are retried, then counted (``alerts_failed``): alerting
never holds up detection or storage. See :mod:`streams.alertmanager`.
"""

from __future__ import annotations

from typing import Any

from gatewatch.events import MalformedRecord, parse_decision, parse_detection
from streams import counters
from streams.alertmanager import AlertSender, decision_alert, detection_alert, resolved_decision_alert
from streams.app import app, settings
from streams.topics import decisions_topic, detections_topic, verified_decisions

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
cfg = settings.alerting
enabled = bool(cfg.alertmanager_url or cfg.webhook_url)
_last_decision_alert: dict[str, dict[str, Any]] = {}
_sender: AlertSender | None = None


def sender() -> AlertSender:
    """The worker's sender, created in the running loop on first use."""
    global _sender
    if _sender is None:
        _sender = AlertSender(alertmanager_url=cfg.alertmanager_url, webhook_url=cfg.webhook_url)
    return _sender


async def _send(alerts: list[dict[str, Any]]) -> None:
    if alerts and await sender().send(alerts):
        counters.incr("alerts_sent", len(alerts))
    elif alerts:
        counters.incr("alerts_failed", len(alerts))


if enabled:
    @app.agent(detections_topic)
    async def alert_detections(stream):  # type: ignore[no-untyped-def]
        """Alert on detections of at least ``min_severity``."""
        async for values in stream.take(100, within=0.2):
            alerts = []
            for value in values:
                try:
                    detection = parse_detection(value)
                except MalformedRecord:
                    continue  # counted by the sink
                if SEVERITY_RANK[detection.severity] >= SEVERITY_RANK[cfg.min_severity] \
                        or detection.evidence.get("kind") == "recovery":
                    alerts.append(detection_alert(detection, cfg.detection_resolve_s))
            await _send(alerts)

    @app.agent(decisions_topic)
    async def alert_decisions(stream):  # type: ignore[no-untyped-def]
        """Alert on decisions; resolve on expiry or deletion (tombstone)."""
        async for event in stream.events():
            if not verified_decisions([event], count=False):
                continue  # counted by the sink
            key, value = event.message.key, event.message.value
            name = (key or b"").decode(errors="replace")
            if value is None:
                last = _last_decision_alert.pop(name, None)
                await _send([resolved_decision_alert(last)] if last else [])
                continue
            try:
                decision = parse_decision(value)
            except MalformedRecord:
                continue  # counted by the sink
            if decision.action == "allow":
                continue
            alert = decision_alert(decision)
            _last_decision_alert[decision.key()] = alert
            await _send([alert])
