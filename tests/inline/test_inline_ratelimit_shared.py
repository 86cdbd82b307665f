"""Shared rate limits across real gateway processes: two ``python -m inline.serve``
processes (one port with SO_REUSEPORT, or two ports), one real redis-server, real HTTP
clients.

- Accuracy: 8 concurrent clients burst for 10 s with one API key against its tier's
  limit; the requests admitted by both gateways together stay within ±2% of the
  limit's allowance, burst + rate × duration (a count, not a timing assertion).
- Outage: Redis hung (SIGSTOP), then killed, while clients keep sending: every request
  is answered — passed by the fail-open gateway, 503 from the fail-closed one, never
  another 5xx — and each such answer is counted in
  ``gatewatch_ratelimit_backend_errors_total``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gatewatch.commands import serve_command
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings, RateLimit, RateLimitPolicy
from inline_testkit import upstream_server
from redis_testkit import RedisServer, redis_server  # noqa: F401  (fixture)

#: Limits the default policies never reach, so only the tier policy under test counts.
UNLIMITED = RateLimit(rate_per_s=1e6, burst=1_000_000)
RATE, BURST, DURATION_S, CLIENTS = 40.0, 40, 10.0, 8


def gateway_settings(settings: GatewatchSettings, upstream: str, redis_url: str, port: int,
                     **overrides) -> GatewatchSettings:
    """Settings of one gateway process: its own admin (metrics) port and spool."""
    admin = free_port()
    return settings.model_copy(update={
        "upstream": upstream, "listen_port": port, "admin_port": admin,
        "spool_dir": settings.chdb_path.parent / f"spool-{admin}",
        "ip_rate_limit": UNLIMITED, "principal_rate_limit": UNLIMITED,
        "rate_limit_redis_url": redis_url, **overrides})


@contextmanager
def gateways(configs: list[GatewatchSettings], reuse_port: bool, log_dir: Path) -> Iterator[list[Path]]:
    """Start one gateway process per settings; wait until each serves its metrics port
    (which opens after its proxy port); stop them with SIGTERM. Yields their log paths."""
    procs, logs = [], []
    try:
        for n, s in enumerate(configs):
            log = log_dir / f"gateway-{n}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(serve_command(s, reuse_port), env=os.environ | s.to_env(),
                                              stdout=out, stderr=subprocess.STDOUT))
            logs.append(log)
        for proc, s, log in zip(procs, configs, logs):
            try:
                wait_for_port(s.listen_host, s.admin_port, timeout_s=30)
            except TimeoutError:
                raise AssertionError(f"gateway did not start (rc={proc.poll()}):\n{log.read_text()}") from None
        yield logs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Addon error" not in text, text


def scrape(s: GatewatchSettings) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from a gateway's ``/metrics``."""
    text = httpx.get(f"http://{s.listen_host}:{s.admin_port}/metrics", timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls))


def client_loop(base: str, ip: str, key: str, stop: threading.Event, deadline: float,
                results: list, max_requests: int = 100_000) -> None:
    """Send GETs as fast as one connection allows until ``stop``/``deadline`` (bounded by
    ``max_requests``); a new connection every 25 requests, so SO_REUSEPORT spreads them.
    Appends ``(status, has RateLimit field, monotonic send time)`` per answer, or
    ``("error", text, time)``."""
    sent = 0
    while sent < max_requests and not stop.is_set() and time.monotonic() < deadline:
        with httpx.Client(base_url=base, timeout=10.0, transport=httpx.HTTPTransport(local_address=ip)) as c:
            for _ in range(25):
                if stop.is_set() or time.monotonic() >= deadline or sent >= max_requests:
                    break
                sent += 1
                at = time.monotonic()
                try:
                    r = c.get(f"/users/{sent}", headers={"X-API-Key": key})
                    results.append((r.status_code, "RateLimit" in r.headers, at))
                except httpx.HTTPError as exc:
                    results.append(("error", repr(exc), at))


def test_two_gateways_share_one_limit_within_two_percent(settings: GatewatchSettings,
                                                         redis_server: RedisServer, tmp_path: Path):
    """2 processes on one port, 8 clients, 10 s: admitted = burst + rate × duration ± 2%.

    The Redis timeout is generous here (1 s): on this shared 2-core machine the
    processes' event loops lag under full load, and a lagging loop turns into
    fail-open admissions (counted by the backend-error metric, asserted zero
    below), which would measure the machine rather than the limiter. The 5 ms
    default and its failures are the next test's subject."""
    key = add_key(settings.keys_file, "key_burst", "team", tier="gold")
    policy = [RateLimitPolicy(name="acc", key="principal", tiers={"gold": f"{RATE:g}:{BURST}"})]
    port = free_port()
    with ExitStack() as stack:
        upstream = stack.enter_context(upstream_server())
        configs = [gateway_settings(settings, upstream, redis_server.url, port, rate_limit_policies=policy,
                                    rate_limit_redis_timeout_ms=1000) for _ in range(2)]
        stack.enter_context(gateways(configs, reuse_port=True, log_dir=tmp_path))
        base = f"http://127.0.0.1:{port}"
        results: list[list] = [[] for _ in range(CLIENTS)]
        stop = threading.Event()
        start = time.monotonic()
        threads = [threading.Thread(target=client_loop,
                                    args=(base, f"127.0.0.{20 + i}", key, stop, start + DURATION_S, results[i]))
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=DURATION_S + 60)
        assert not any(t.is_alive() for t in threads)
        metrics = [scrape(s) for s in configs]

    answers = [a for per_client in results for a in per_client]
    statuses = Counter(status for status, _, _ in answers)
    admitted, sent = statuses[200], len(answers)
    # The duration the limit was pressed: from the first request sent to the last one.
    sent_at = [at for _, _, at in answers]
    duration = max(sent_at) - min(sent_at)
    allowance = BURST + RATE * duration
    figures = (f"sent {sent}, admitted {admitted}, refused {statuses[429]}, allowance {allowance:.1f} "
               f"(burst {BURST} + {RATE:g}/s × {duration:.3f} s), error {100 * (admitted / allowance - 1):+.2f}%")
    print(figures)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > admitted, f"the clients did not press the limit: {figures}"
    assert abs(admitted - allowance) <= 0.02 * allowance, figures
    # Both processes served and admitted requests: the shared state, not one process, kept the count.
    per_process = [total(m, "gatewatch_requests_total", status="200") for m in metrics]
    assert all(n > 0 for n in per_process) and sum(per_process) == admitted, (per_process, figures)
    assert all(total(m, "gatewatch_ratelimit_backend_errors_total") == 0 for m in metrics)


def test_redis_hung_then_killed_fail_open_and_fail_closed(settings: GatewatchSettings,
                                                          redis_server: RedisServer, tmp_path: Path):
    """Two gateways (fail open, fail closed; default 5 ms timeout) share a limit in Redis;
    clients keep sending while Redis is hung, then killed."""
    key = add_key(settings.keys_file, "key_outage", "team", tier="gold")
    policy = [RateLimitPolicy(name="acc", key="principal", tiers={"gold": "20:20"})]
    with ExitStack() as stack:
        upstream = stack.enter_context(upstream_server())
        open_gw, closed_gw = (gateway_settings(settings, upstream, redis_server.url, free_port(),
                                               rate_limit_policies=policy, rate_limit_fail_open=fail_open)
                              for fail_open in (True, False))
        stack.enter_context(gateways([open_gw, closed_gw], reuse_port=False, log_dir=tmp_path))
        bases = [f"http://127.0.0.1:{s.listen_port}" for s in (open_gw, closed_gw)]

        # Redis up: one budget for both gateways (20 at once, then 20/s).
        with httpx.Client(timeout=10) as c:
            first = [c.get(f"{bases[i % 2]}/users/1", headers={"X-API-Key": key}) for i in range(30)]
        assert {r.status_code for r in first} == {200, 429}
        assert first[0].headers["RateLimit-Policy"] == \
            '"ip";q=1000000;w=1, "principal";q=1000000;w=1, "acc";q=20;w=1'

        # Under load: Redis hung, then killed, mid-run.
        results: list[list] = [[], []]
        stop = threading.Event()
        threads = [threading.Thread(target=client_loop, args=(bases[i], "127.0.0.1", key, stop,
                                                              time.monotonic() + 60, results[i], 3000))
                   for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        redis_server.pause()
        time.sleep(1.5)
        redis_server.kill()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)

        # Redis gone: a fixed number of requests to each, answered as documented.
        with httpx.Client(timeout=10) as c:
            after = [[c.get(f"{base}/users/2", headers={"X-API-Key": key}) for _ in range(10)] for base in bases]
        metrics = [scrape(s) for s in (open_gw, closed_gw)]

    assert [r.status_code for r in after[0]] == [200] * 10          # fail open: passed
    assert all("RateLimit" not in r.headers for r in after[0])     # nothing to report: not counted
    assert [r.status_code for r in after[1]] == [503] * 10          # fail closed: 503
    assert after[1][0].headers["Retry-After"] == "1" and after[1][0].json()["error"] == "unavailable"

    open_answers = [a[:2] for a in results[0]] + [(r.status_code, "RateLimit" in r.headers) for r in after[0]]
    closed_answers = [a[:2] for a in results[1]] + [(r.status_code, "RateLimit" in r.headers) for r in after[1]]
    assert {s for s, _ in open_answers} <= {200, 429}, Counter(s for s, _ in open_answers)
    assert {s for s, _ in closed_answers} <= {200, 429, 503}, Counter(s for s, _ in closed_answers)
    # Every answer given without Redis is counted once: passes without RateLimit fields on the
    # fail-open gateway, 503s on the fail-closed one.
    passed_blind = sum(1 for s, fields in open_answers if s == 200 and not fields)
    refused_503 = sum(1 for s, _ in closed_answers if s == 503)
    open_errors = total(metrics[0], "gatewatch_ratelimit_backend_errors_total", outcome="fail_open")
    closed_errors = total(metrics[1], "gatewatch_ratelimit_backend_errors_total", outcome="fail_closed")
    print(f"fail-open gateway: {len(open_answers)} answers, {passed_blind} passed without Redis; "
          f"fail-closed gateway: {len(closed_answers)} answers, {refused_503} × 503")
    assert open_errors == passed_blind >= 10
    assert closed_errors == refused_503 >= 10
    for m in metrics:   # the hang was seen as timeouts (5 ms), the rest as errors or the pause after them
        assert total(m, "gatewatch_ratelimit_backend_errors_total", reason="timeout") >= 1
    assert total(metrics[1], "gatewatch_ratelimit_backend_errors_total", outcome="fail_open") == 0
