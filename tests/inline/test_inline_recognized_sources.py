"""The recognized sources of an account: successful logins, bounded and expiring."""

import pytest

from inline.recognized_sources import RecognizedSources


def test_a_successful_login_recognizes_its_address_for_that_account_only():
    seen = RecognizedSources(max_entries=10, ttl_s=100.0)
    seen.remember("h-alice", "203.0.113.5", now=1000.0)
    assert seen.recognized("h-alice", "203.0.113.5", now=1050.0)
    assert not seen.recognized("h-alice", "203.0.113.6", now=1050.0)
    assert not seen.recognized("h-bob", "203.0.113.5", now=1050.0)


def test_recognition_expires_after_ttl_and_a_new_login_renews_it():
    seen = RecognizedSources(max_entries=10, ttl_s=100.0)
    seen.remember("h", "192.0.2.1", now=0.0)
    assert seen.recognized("h", "192.0.2.1", now=100.0)
    assert not seen.recognized("h", "192.0.2.1", now=100.5)
    assert len(seen) == 0                                  # the expired pair is forgotten
    seen.remember("h", "192.0.2.1", now=200.0)
    assert seen.recognized("h", "192.0.2.1", now=250.0)


def test_the_least_recently_confirmed_pair_goes_first_when_full():
    seen = RecognizedSources(max_entries=2, ttl_s=1e9)
    seen.remember("a", "192.0.2.1", now=1.0)
    seen.remember("b", "192.0.2.2", now=2.0)
    seen.remember("a", "192.0.2.1", now=3.0)               # confirmed again: now the newest
    seen.remember("c", "192.0.2.3", now=4.0)
    assert len(seen) == 2
    assert seen.recognized("a", "192.0.2.1", now=5.0) and seen.recognized("c", "192.0.2.3", now=5.0)
    assert not seen.recognized("b", "192.0.2.2", now=5.0)


@pytest.mark.parametrize("max_entries, ttl_s", [(0, 10.0), (5, 0.0), (5, float("nan"))])
def test_bad_bounds_are_refused(max_entries, ttl_s):
    with pytest.raises(ValueError):
        RecognizedSources(max_entries=max_entries, ttl_s=ttl_s)
