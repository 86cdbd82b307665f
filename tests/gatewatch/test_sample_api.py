"""The sample upstream API as a real process over real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gatewatch.sample_api import SampleData, password_for


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
