"""Route templates from an OpenAPI 3 document and configured patterns: pure matching, and
the routes a real gateway records in its events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from gatewatch.commands import serve_command
from gatewatch.events import parse_request_event
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings
from inline.route_templates import RouteTable, load_openapi, openapi_templates
from inline.routes import normalize_path, route_for

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "shop", "version": "1"},
    "servers": [{"url": "https://api.example.com/v1"}],
    "paths": {
        "/users/{userId}": {}, "/users/me": {}, "/users/{userId}/orders/{orderId}": {},
        "/books/{title}": {}, "/health": {},
    },
}


def test_openapi_paths_with_server_base_path() -> None:
    assert openapi_templates(OPENAPI) == ["/v1/users/{userId}", "/v1/users/me",
                                         "/v1/users/{userId}/orders/{orderId}", "/v1/books/{title}", "/v1/health"]


@pytest.mark.parametrize("path,route", [
    ("/v1/users/42", "/v1/users/{userId}"),
    ("/v1/users/me", "/v1/users/me"),                      # a concrete path beats the template
    ("/v1/users/42/orders/7", "/v1/users/{userId}/orders/{orderId}"),
    ("/v1/books/Dune", "/v1/books/{title}"),               # name-like ids the normalizer would not see
    ("/v1/users/42/orders", None),
    ("/v1/health/", "/v1/health"),
    ("/v2/users/42", None),
])
def test_trie_matching(path: str, route: str | None) -> None:
    assert RouteTable(openapi_templates(OPENAPI)).match(path) == route


def test_normalized_paths_cannot_dodge_a_template() -> None:
    table = RouteTable(["/users/{id}", "/admin/{page}"])
    for raw in ["/users/1/../2", "//users///2", "/users/%32", "/admin/./x"]:
        assert route_for(normalize_path(raw), table) in ("/users/{id}", "/admin/{page}")


def test_fallback_is_the_normalizer() -> None:
    assert route_for("/orders/123", RouteTable(["/books/{title}"])) == "/orders/{id}"
    assert route_for("/orders/123", None) == "/orders/{id}"


@pytest.mark.parametrize("bad", ["users/{id}", "/users/x{id}", "/users/{id}{x}"])
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        RouteTable([bad])


def test_load_openapi_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text(json.dumps(OPENAPI))
    (tmp_path / "api.yaml").write_text("openapi: 3.1.0\npaths:\n  /a/{b}: {}\n")
    assert load_openapi(tmp_path / "api.json")[0] == "/v1/users/{userId}"
    assert load_openapi(tmp_path / "api.yaml") == ["/a/{b}"]
    (tmp_path / "swagger.json").write_text(json.dumps({"swagger": "2.0", "paths": {}}))
    with pytest.raises(ValueError, match="not an OpenAPI 3"):
        load_openapi(tmp_path / "swagger.json")


def test_gateway_records_openapi_routes(settings: GatewatchSettings, sample_api: str, tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text(json.dumps({"openapi": "3.0.0", "paths": {
        "/users/{userId}": {}, "/users/{userId}/orders": {}, "/orders/{orderId}": {}}}))
    raw = add_key(tmp_path / "keys.toml", "key_routes", owner="r")
    s = settings.model_copy(update={"upstream": sample_api, "listen_port": free_port(), "admin_port": 0,
                                    "keys_file": tmp_path / "keys.toml", "spool_dir": tmp_path / "spool",
                                    "openapi_spec": tmp_path / "api.json", "route_patterns": ["/books/{title}"]})
    proc = subprocess.Popen(serve_command(s), env=os.environ | s.to_env())
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        base = f"http://{s.listen_host}:{s.listen_port}"
        for path in ["/users/7", "/users/7/orders", "/users/%39/orders", "/orders/abc", "/books/Dune", "/misc/42"]:
            httpx.get(base + path, headers={"X-API-Key": raw})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20)
    tps = [TopicPartition(s.topic_requests, p) for p in sorted(consumer.partitions_for_topic(s.topic_requests))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    events, deadline = [], time.monotonic() + 10
    while len(events) < 6 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            events += [parse_request_event(r.value) for r in records]
    consumer.close()
    routes = {e.path: e.route for e in events}
    assert routes == {"/users/7": "/users/{userId}", "/users/7/orders": "/users/{userId}/orders",
                      "/users/%39/orders": "/users/{userId}/orders", "/orders/abc": "/orders/{orderId}",
                      "/books/Dune": "/books/{title}", "/misc/42": "/misc/{id}"}
