"""The sample upstream API as a real process over real sockets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from gatewatch.netutil import free_port, wait_for_port
from gatewatch.sample_api import SampleData, password_for


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gatewatch.sample_api", "--port", str(port)])
    try:
        wait_for_port("127.0.0.1", port, timeout_s=15)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
