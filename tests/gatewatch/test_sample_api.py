"""The sample upstream API as a real process over real sockets."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from gatewatch.netutil import free_port, wait_for_port
from gatewatch.sample_api import EXTRA_ORDERS_BASE, SampleData, password_for


@pytest.fixture
def api(sample_api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sample_api) as client:
        yield client


def login(api: httpx.Client, user: str) -> dict:
    resp = api.post("/login", json={"username": user, "password": password_for(user)})
    assert resp.status_code == 200
    return resp.json()


def test_login_outcomes(api: httpx.Client) -> None:
    assert api.post("/login", json={"username": "user1", "password": "wrong"}).status_code == 401
    assert api.post("/login", json={"username": "nobody", "password": "x"}).status_code == 401
    assert api.post("/login", content=b"{not json").status_code == 400
    assert api.post("/login", json={"username": "user1"}).status_code == 400
    assert login(api, "user1")["user_id"] == 1


def test_ownership_statuses(api: httpx.Client) -> None:
    data = SampleData.generate()
    token = login(api, "user2")["token"]
    auth = {"Authorization": f"Bearer {token}"}
    own, other = data.orders_of(2)[0], data.orders_of(3)[0]
    assert api.get(f"/orders/{own}").status_code == 401
    assert api.get(f"/orders/{own}", headers=auth).json()["owner"] == 2
    assert api.get(f"/orders/{other}", headers=auth).status_code == 403
    assert api.get("/orders/999999", headers=auth).status_code == 404
    assert api.get("/orders/abc", headers=auth).status_code == 404
    assert api.get("/users/2", headers=auth).status_code == 200
    assert api.get("/users/3", headers=auth).status_code == 403
    assert api.get("/users/2/orders", headers=auth).json() == {"orders": data.orders_of(2)}


@pytest.fixture
def harness_api() -> Iterator[httpx.Client]:
    """The sample API with the quality harness's knobs: user5 owns 30 extra orders,
    documents are served unchecked, the latency control endpoint is on."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gatewatch.sample_api", "--port", str(port), "--seed", "11",
                             "--extra-orders", "user5=30", "--unchecked", "documents", "--control"])
    try:
        wait_for_port("127.0.0.1", port, timeout_s=15)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_documents_checked_by_default(api: httpx.Client) -> None:
    data = SampleData.generate()
    auth = {"Authorization": f"Bearer {login(api, 'user2')['token']}"}
    own, other = data.documents_of(2)[0], data.documents_of(3)[0]
    assert api.get("/users/2/documents", headers=auth).json() == {"documents": data.documents_of(2)}
    assert api.get(f"/documents/{own}", headers=auth).json()["owner"] == 2
    assert api.get(f"/documents/{other}", headers=auth).status_code == 403
    assert api.get(f"/documents/{uuid.uuid4()}", headers=auth).status_code == 404
    assert api.get(f"/documents/{own}").status_code == 401


def test_harness_knobs(harness_api: httpx.Client) -> None:
    data = SampleData.generate(seed=11, extra_orders={"user5": 30})
    auth = {"Authorization": f"Bearer {login(harness_api, 'user5')['token']}"}
    extra = list(range(EXTRA_ORDERS_BASE, EXTRA_ORDERS_BASE + 30))
    assert harness_api.get("/users/5/orders", headers=auth).json()["orders"][-30:] == extra
    assert harness_api.get(f"/orders/{extra[7]}", headers=auth).json()["owner"] == 5
    foreign = data.documents_of(6)[0]
    assert harness_api.get(f"/documents/{foreign}", headers=auth).json()["owner"] == 6  # the flaw
    assert harness_api.get(f"/documents/{uuid.uuid4()}", headers=auth).status_code == 404
    assert harness_api.get(f"/documents/{foreign}").status_code == 401  # still needs a session

    set_latency = harness_api.put("/_control/latency", json={"route": "/users/{id}", "ms": 300})
    assert set_latency.json() == {"latency_ms": {"/users/{id}": 300.0}}
    slow = harness_api.get("/users/5", headers=auth)
    assert slow.status_code == 200 and slow.elapsed.total_seconds() >= 0.3  # at least the injected sleep
    assert harness_api.put("/_control/latency", json={"route": "/users/{id}", "ms": 0}).json() == {"latency_ms": {}}
    assert harness_api.put("/_control/latency", json={"route": "/users/{id}"}).status_code == 400


def test_control_endpoint_off_by_default(api: httpx.Client) -> None:
    assert api.put("/_control/latency", json={"route": "/users/{id}", "ms": 100}).status_code in (404, 405)


def test_generate_rejects_unknown_extra_owner() -> None:
    with pytest.raises(ValueError, match="unknown user"):
        SampleData.generate(n_users=3, extra_orders={"user9": 5})
