"""BOLA detector details the data-driven cases do not pin down: how object ids are read
from paths (detectors.bola.object_id), odd id values, the order in which idle principals
and quiet periods are forgotten, and accesses arriving out of order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from detectors.bola import BolaDetector, object_id
from gatewatch.events import RequestEvent

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _get(i: int, path: str, status: int, *, principal: str = "key-1", at: float | None = None,
         route: str = "/orders/{id}") -> RequestEvent:
    return RequestEvent(event_id=f"e{i}", ts=T0 + timedelta(seconds=i if at is None else at),
                        client_ip="198.51.100.4", method="GET", host="api", path=path, route=route,
                        status=status, principal=principal)


@pytest.mark.parametrize("path, route, expected", [
    ("/orders/123", "/orders/{id}", ("123",)),
    ("/orders/123/", "/orders/{id}", ("123",)),          # trailing "/" on the path
    ("/orders/123//", "/orders/{id}/", ("123",)),        # ... and on the template
    ("/orders/123?page=2", "/orders/{id}", ("123",)),    # query string cut off
    ("/orders/123#top", "/orders/{id}", ("123",)),       # fragment cut off
    ("/orders/123/?a=/x/y", "/orders/{id}", ("123",)),
    ("/orders/a%2Fb", "/orders/{id}", ("a%2Fb",)),       # encoded "/" stays in the value
    ("/users/7/orders/123", "/users/{uid}/orders/{oid}", ("7", "123")),
    ("/orders/", "/orders/{id}", None),                  # empty value
    ("/orders//123", "/orders/{a}/{b}", None),           # empty first value
    ("/orders/1/2", "/orders/{id}", None),               # one segment too many
    ("/order/1", "/orders/{id}", None),                  # literal segment differs
    ("/ORDERS/1", "/orders/{id}", None),                 # literals are case-sensitive
    ("/orders?id=1", "/orders", None),                   # no parameter in the template
    ("/a?b/1", "/a?b/{id}", None),                       # a literal "?" is never in a path
    ("/a.b/1", "/a.b/{id}", ("1",)),
    ("/axb/1", "/a.b/{id}", None),                       # "." is a literal, not a wildcard
    ("/orders/12\n", "/orders/{id}", ("12\n",)),
])
def test_object_id_reads_template_parameters(path: str, route: str, expected: tuple[str, ...] | None) -> None:
    assert object_id(path, route) == expected


def test_non_ascii_digits_neither_crash_nor_break_the_run() -> None:
    det = BolaDetector(min_distinct_ids=3, min_denied_ids=1, min_denied_share=1.0,
                       sequential_denied_share=0.1, min_sequential_run=3)
    for i, path in enumerate(["/orders/100", "/orders/101", "/orders/\u00b2"]):  # superscript two: not decimal
        assert det.process(_get(i, path, 200), now=T0 + timedelta(seconds=i)) == []
    # the superscript reset the run: 102..104 make a run of 3, with 1 of 6 ids refused
    out = []
    for i, path in enumerate(["/orders/102", "/orders/103", "/orders/104"], start=3):
        out += det.process(_get(i, path, 404 if i == 4 else 200), now=T0 + timedelta(seconds=i))
    assert [d.evidence["rule"] for d in out] == ["sequential_ids"]
    assert (out[0].evidence["sequential_run"], out[0].evidence["sequential_from"]) == (3, 102)


def test_idle_principals_are_forgotten_least_recently_seen_first() -> None:
    det = BolaDetector(window_s=60, state_ttl_s=100)
    for i, who in enumerate(["a", "b", "c", "a"]):  # a seen again last: order b, c, a
        det.process(_get(i, f"/orders/{i}", 200, principal=who), now=T0 + timedelta(seconds=i))
    assert det.tracked_principals == 3
    det.process(_get(9, "/health", 200, route="/health"), now=T0 + timedelta(seconds=101))
    assert det.tracked_principals == 2      # b (last seen at 1 s) only
    det.process(_get(9, "/health", 200, route="/health"), now=T0 + timedelta(seconds=102.5))
    assert det.tracked_principals == 1      # c; a was seen at 3 s
    det.process(_get(9, "/health", 200, route="/health"), now=T0 + timedelta(seconds=103))
    assert det.tracked_principals == 0


def test_quiet_periods_end_in_the_order_they_began() -> None:
    det = BolaDetector(min_distinct_ids=3, min_denied_ids=3, ban_ttl_s=50)
    fired = []
    for who, start in (("a", 0), ("b", 10)):
        for k in range(3):
            i = start + k
            fired += det.process(_get(i, f"/orders/{100 + i}", 403, principal=who), now=T0 + timedelta(seconds=i))
    assert [d.value for d in fired] == ["a", "b"]
    assert det.state_size == 2 + 2          # two principals, two quiet periods
    det.process(_get(60, "/health", 200, route="/health"), now=T0 + timedelta(seconds=52))
    assert det.state_size == 2 + 1          # a's quiet period (from 2 s) is over
    # a is heard again, b is still quiet
    more = det.process(_get(53, "/orders/900", 403, principal="a"), now=T0 + timedelta(seconds=53))
    more += det.process(_get(54, "/orders/901", 403, principal="b"), now=T0 + timedelta(seconds=54))
    assert [d.value for d in more] == ["a"]


def test_out_of_order_accesses_are_counted_in_time_order() -> None:
    det = BolaDetector(window_s=10, min_distinct_ids=4, min_denied_ids=4)
    out = []
    for i, at in enumerate([5.0, 3.0, 6.0, -20.0, 4.0]):  # -20 s: out of the window, ignored
        out += det.process(_get(i, f"/orders/{i}", 404, at=at), now=T0)
    assert len(out) == 1
    ev = out[0].evidence
    assert ev["distinct_ids"] == 4 and ev["statuses"] == {"404": 4}
    assert (ev["first_ts"], ev["last_ts"]) == ((T0 + timedelta(seconds=3)).isoformat(),
                                               (T0 + timedelta(seconds=6)).isoformat())
    assert out[0].sample_event_ids == ["e1", "e4", "e0", "e2"]


@pytest.mark.parametrize("principal, who", [("key-1", ("principal", "key-1")),
                                             ("", ("ip", "198.51.100.4"))])   # an anonymous caller
def test_ids_given_back_after_a_restart_are_not_refusals(principal, who) -> None:
    """``give`` (the given ids a worker restores from the store): a caller's 404s on its
    own older ids are not refusals, as on the detector that saw the 2xx answers; given
    callers are forgotten, least recently given first, once idle for state_ttl_s."""
    params = dict(min_distinct_ids=5, min_denied_ids=3, state_ttl_s=3600)
    history = [_get(i, f"/orders/{100 + i}", 200, at=i, principal=principal) for i in range(6)]
    deleted = [_get(10 + i, f"/orders/{100 + i}", 404, at=2000 + i, principal=principal)   # its own, now gone
               for i in range(6)]
    live = BolaDetector(**params)
    for event in history:
        live.process(event, now=event.ts)
    restored, forgetful = BolaDetector(**params), BolaDetector(**params)
    for event in history:
        assert restored.give(*who, event.path, event.route, event.ts)
    assert not restored.give(*who, "/orders", "/orders", T0)   # no id in the path
    with pytest.raises(ValueError):
        restored.give("username", "u", "/orders/1", "/orders/{id}", T0)
    found = {name: [d for e in deleted for d in det.process(e, now=e.ts)]
             for name, det in (("live", live), ("restored", restored), ("forgetful", forgetful))}
    assert found["live"] == found["restored"] == []
    assert [(d.scope, d.value) for d in found["forgetful"]] == [who]   # without them: six refusals

    idle = BolaDetector(**params)
    for i, caller in enumerate(["a", "b", "a"]):
        idle.give("principal", caller, f"/orders/{i}", "/orders/{id}", T0 + timedelta(seconds=i))
    idle.process(_get(9, "/health", 200, route="/health"), now=T0 + timedelta(seconds=3601.5))
    assert idle.tracked_principals == 1      # b (given at 1 s) is forgotten, a (2 s) is kept
