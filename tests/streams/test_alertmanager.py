"""Alerts for decisions and detections, delivered to a real Alertmanager process
(Debian ``prometheus-alertmanager``, started here on loopback) and to a real
webhook HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from gatewatch.events import Decision, Detection
from gatewatch.netutil import free_port
from streams.alertmanager import (AlertSender, decision_alert, detection_alert,
                                  resolved_decision_alert)

NOW = datetime.now(timezone.utc)


def decision(**kw) -> Decision:
    base = dict(scope="ip", value="203.0.113.9", detector="credential_stuffing", reason="10 failed logins",
                created_at=NOW, expires_at=NOW + timedelta(minutes=10),
                evidence={"failures": 12, "distinct_usernames": 9, "thresholds": {"min_failures": 10}})
    return Decision(**(base | kw))


def active_alerts(url: str) -> list[dict]:
    return httpx.get(f"{url}/api/v2/alerts", params={"active": "true"}).json()


def test_decision_alert_shape() -> None:
    a = decision_alert(decision(), now=NOW)
    assert a["labels"] == {"alertname": "GatewatchDecision", "detector": "credential_stuffing", "scope": "ip",
                           "value": "203.0.113.9", "action": "ban", "severity": "high"}
    assert a["annotations"]["explain"].startswith("gatewatch explain ")
    assert json.loads(a["annotations"]["evidence"])["failures"] == 12
    assert a["endsAt"].endswith("Z") and a["endsAt"] > a["startsAt"]


def test_detection_recovery_resolves_at_once() -> None:
    det = Detection(ts=NOW, detector="latency_regression", scope="route", value="/orders/{id}",
                    severity="medium", evidence={"kind": "recovery", "regression_severity": "medium"})
    a = detection_alert(det, resolve_after_s=600)
    assert a["startsAt"] == a["endsAt"] and a["labels"]["severity"] == "medium"


def test_alerts_reach_alertmanager_and_resolve(alertmanager: str) -> None:
    async def run() -> AlertSender:
        sender = AlertSender(alertmanager_url=alertmanager)
        d = decision()
        det = Detection(ts=NOW, detector="credential_stuffing", scope="ip", value="203.0.113.9",
                        summary="12 failed logins over 9 usernames", evidence={"failures": 12},
                        sample_event_ids=["e1", "e2"])
        assert await sender.send([decision_alert(d), detection_alert(det, resolve_after_s=600)])
        return sender, d

    sender, d = asyncio.run(run())
    alerts = active_alerts(alertmanager)
    names = sorted(a["labels"]["alertname"] for a in alerts)
    assert names == ["GatewatchDecision", "GatewatchDetection"]
    dec = next(a for a in alerts if a["labels"]["alertname"] == "GatewatchDecision")
    assert dec["labels"]["value"] == "203.0.113.9" and dec["annotations"]["decision_id"] == d.id
    assert dec["annotations"]["explain"] == f"gatewatch explain {d.id}"

    # The decision is deleted: its alert resolves; the detection's stays.
    asyncio.run(AlertSender(alertmanager_url=alertmanager).send([resolved_decision_alert(decision_alert(d))]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        remaining = [a["labels"]["alertname"] for a in active_alerts(alertmanager)]
        if remaining == ["GatewatchDetection"]:
            break
        time.sleep(0.1)
    assert remaining == ["GatewatchDetection"]


def test_renewed_decision_updates_one_alert(alertmanager: str) -> None:
    first = decision()
    renewed = decision(expires_at=NOW + timedelta(minutes=40))
    sender = AlertSender(alertmanager_url=alertmanager)
    assert asyncio.run(sender.send([decision_alert(first)]))
    assert asyncio.run(AlertSender(alertmanager_url=alertmanager).send([decision_alert(renewed)]))
    alerts = active_alerts(alertmanager)
    assert len(alerts) == 1 and alerts[0]["endsAt"].startswith(decision_alert(renewed)["endsAt"][:16])


class _Capture(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_sink_gets_the_same_alerts() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sender = AlertSender(webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        assert asyncio.run(sender.send([decision_alert(decision())]))
        assert _Capture.bodies[-1]["version"] == "gatewatch/1"
        assert _Capture.bodies[-1]["alerts"][0]["labels"]["alertname"] == "GatewatchDecision"
    finally:
        server.shutdown()


def test_unreachable_receiver_is_counted_not_raised() -> None:
    sender = AlertSender(alertmanager_url=f"http://127.0.0.1:{free_port()}", attempts=2, backoff_s=0.01)
    assert asyncio.run(sender.send([decision_alert(decision())])) is False
    assert sender.stats.failed == 1 and sender.stats.retries == 1
