"""Shared broker helpers of the gateway (inline/brokers.py)."""

from __future__ import annotations

import itertools
import logging

from inline.brokers import RETRY_MAX_S, RETRY_MIN_S, backoff, quiet_aiokafka_errors


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_aiokafka_errors_reach_the_root_as_warnings():
    """mitmdump exits on error-level logs during start-up (its errorcheck addon);
    aiokafka's "Unable connect" errors must arrive as warnings."""
    root, collect = logging.getLogger(), _Collect()
    old_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    try:
        quiet_aiokafka_errors()
        quiet_aiokafka_errors()   # idempotent: one handler, one record
        logging.getLogger("aiokafka.conn").error('Unable connect to "127.0.0.1:1"')
        logging.getLogger("aiokafka.consumer").info("plain info")
    finally:
        root.removeHandler(collect)
        root.setLevel(old_level)
    assert [(r.name, r.levelno) for r in collect.records] == [
        ("aiokafka.conn", logging.WARNING), ("aiokafka.consumer", logging.INFO)]


def test_backoff_doubles_up_to_the_cap():
    delays = list(itertools.islice(backoff(), 8))
    assert delays[0] == RETRY_MIN_S
    assert all(b == min(2 * a, RETRY_MAX_S) for a, b in zip(delays, delays[1:]))
    assert delays[-1] == RETRY_MAX_S
