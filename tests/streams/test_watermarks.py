"""Low watermarks of a re-keyed stream merged from several request partitions."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from streams.watermarks import EPOCH, SourceWatermarks, to_datetime


def test_waits_for_every_source_for_a_while_then_takes_the_least_progress() -> None:
    w = SourceWatermarks(expected_sources=3, idle_s=10)
    w.update(0, {0: 900.0}, now_s=0.0)
    w.update(0, {1: 300.0}, now_s=0.1)
    assert w.watermark(0, now_s=0.2) is None  # source 2 may just be late
    w.update(0, {2: 600.0}, now_s=0.3)
    assert w.watermark(0, now_s=0.4) == 300.0
    w.update(0, {1: 200.0, 0: 950.0}, now_s=0.5)  # progress never goes back
    assert w.watermark(0, now_s=0.6) == 300.0
    assert w.watermark(1, now_s=0.6) is None  # another re-keyed partition: its own sources


def test_a_silent_source_stops_holding_the_watermark_back() -> None:
    w = SourceWatermarks(expected_sources=2, idle_s=10)
    w.update(0, {0: 100.0}, now_s=0.0)
    assert w.watermark(0, now_s=5.0) is None
    assert w.watermark(0, now_s=10.5) == 100.0  # every source heard is quiet: nothing on its way
    w.update(0, {0: 700.0}, now_s=11.0)
    assert w.watermark(0, now_s=11.0) == 700.0  # source 1 never heard, grace over
    w.update(0, {1: 400.0}, now_s=12.0)
    assert w.watermark(0, now_s=12.0) == 400.0
    w.update(0, {0: 800.0}, now_s=23.0)
    assert w.watermark(0, now_s=23.0) == 800.0  # source 1 silent for 11 s


def test_a_source_whose_progress_is_only_repeated_stops_holding_the_watermark_back() -> None:
    """The request consumer re-sends every partition's progress once a second: a partition
    whose keys went quiet is heard, but its progress no longer moves."""
    w = SourceWatermarks(expected_sources=2, idle_s=10)
    w.update(0, {0: 100.0, 1: 100.0}, now_s=0.0)
    for t in range(1, 12):
        w.update(0, {0: 100.0 + 60 * t, 1: 100.0}, now_s=float(t))  # source 1 quiet, re-sent
    assert w.watermark(0, now_s=9.5) == 100.0   # quiet for less than idle_s: it may be late
    assert w.watermark(0, now_s=11.0) == 760.0  # quiet for 11 s: left out
    w.update(0, {1: 790.0}, now_s=12.0)         # it moves again: back in
    assert w.watermark(0, now_s=12.0) == 760.0
    assert w.watermark(0, now_s=30.0) == 790.0   # both quiet: the newest progress heard


def test_empty_reports_and_bad_parameters() -> None:
    w = SourceWatermarks(expected_sources=1)
    w.update(0, {}, now_s=0.0)
    assert w.partitions() == [] and w.watermark(0, now_s=0.0) is None
    with pytest.raises(ValueError):
        SourceWatermarks(expected_sources=0)
    assert to_datetime(None) == EPOCH
    assert to_datetime(0.5) == datetime(1970, 1, 1, 0, 0, 0, 500000, tzinfo=timezone.utc)
