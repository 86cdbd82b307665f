"""Gateway memory with many active decisions (issue 3 target: ≤ 200 MB RSS with 100k).

Starts a real Tansu broker, a small upstream and a real mitmdump with the
gatewatch addons (``gatewatch.commands.gateway_command``, settings passed as
``GATEWATCH_*`` env), measures the gateway's RSS, publishes N active
decisions to the decisions topic (a seeded mix of scopes: ip v4/v6, prefix,
principal, username, asn, country; ban and throttle), then one last ban on a
loopback address, waits until the gateway answers that address 403 (so every
decision before it has been applied), and measures again.

Prints a table and writes ``bench/results/decisions_memory.json``. Not a test.

    .venv/bin/python bench/decisions_memory.py [--decisions 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
from kafka import KafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gatewatch.broker import create_topics, start_tansu  # noqa: E402
from gatewatch.commands import gateway_command  # noqa: E402
from gatewatch.events import Decision  # noqa: E402
from gatewatch.netutil import free_port, wait_for_port  # noqa: E402
from gatewatch.settings import load_settings  # noqa: E402
from gatewatch.signing import DecisionSigner  # noqa: E402

SEED = 3
TARGET_MB = 200.0
PROBE_IP = "127.0.0.99"


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def decisions(n: int, rng: random.Random) -> list[Decision]:
    """``n`` distinct active decisions with a seeded mix of scopes and actions."""
    now = datetime.now(timezone.utc)
    out, seen = [], set()
    while len(out) < n:
        r = rng.random()
        if r < 0.55:
            scope, value = "ip", f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        elif r < 0.70:
            scope, value = "ip", "2001:db8:" + ":".join(f"{rng.randrange(65536):x}" for _ in range(6))
        elif r < 0.80:
            scope, value = "prefix", f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
        elif r < 0.88:
            scope, value = "principal", f"key_{rng.randrange(10**9):09d}"
        elif r < 0.97:
            scope, value = "username", f"{rng.getrandbits(256):064x}"
        elif r < 0.99:
            scope, value = "asn", str(rng.randrange(1, 400_000))
        else:
            scope, value = "country", rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        if (scope, value) in seen:
            continue
        seen.add((scope, value))
        out.append(Decision(scope=scope, value=value, action="ban" if rng.random() < 0.9 else "throttle",
                            reason="bench", detector="bench", created_at=now,
                            expires_at=now + timedelta(hours=1), origin="cli",
                            evidence={"failures": rng.randrange(10, 100), "window_s": 60}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for the last decision, s")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decisions_memory.json")
    args = parser.parse_args()

    with TemporaryDirectory(prefix="gatewatch-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        broker_port = free_port()
        broker = start_tansu("127.0.0.1", broker_port, tmp / "tansu.log")
        gateway = None
        try:
            wait_for_port("127.0.0.1", broker_port, 10)
            (tmp / "keys.toml").write_text("")
            s = load_settings(bootstrap_servers=f"127.0.0.1:{broker_port}", listen_port=free_port(),
                              upstream=f"http://127.0.0.1:{upstream.server_port}", keys_file=tmp / "keys.toml",
                              public_routes=["/*"], spool_dir=tmp / "spool", admin_port=free_port())
            create_topics(s)
            env = {**os.environ, **s.to_env()}
            with open(tmp / "mitmdump.log", "wb") as log:
                gateway = subprocess.Popen(gateway_command(s), env=env, stdout=log, stderr=subprocess.STDOUT)
            wait_for_port(s.listen_host, s.listen_port, 30)
            client = httpx.Client(base_url=f"http://{s.listen_host}:{s.listen_port}", timeout=10,
                                  transport=httpx.HTTPTransport(local_address=PROBE_IP))
            for _ in range(50):   # warm up the request path
                client.get("/health")
            time.sleep(1.0)
            rss_before, _ = rss_mb(gateway.pid)

            batch = decisions(args.decisions, random.Random(SEED))
            now = datetime.now(timezone.utc)
            last = Decision(scope="ip", value=PROBE_IP, action="ban", reason="bench last", detector="bench",
                            created_at=now, expires_at=now + timedelta(hours=1), origin="cli")
            producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=20, batch_size=256 * 1024)
            signer = DecisionSigner.from_settings(s)
            t0 = time.monotonic()
            for d in [*batch, last]:
                key, value = d.key().encode(), d.to_json()
                producer.send(s.topic_decisions, key=key, value=value, headers=signer.headers(key, value))
            producer.flush()
            producer.close()
            published_s = time.monotonic() - t0
            deadline = time.monotonic() + args.timeout
            status = 0
            while time.monotonic() < deadline:
                status = client.get("/health").status_code
                if status == 403:
                    break
                time.sleep(0.2)
            enforced_s = time.monotonic() - t0
            if status != 403:
                raise SystemExit(f"the gateway did not enforce the last decision within {args.timeout:.0f} s")
            time.sleep(1.0)
            rss_after, rss_peak = rss_mb(gateway.pid)
            metrics = httpx.get(f"http://127.0.0.1:{s.admin_port}/metrics", timeout=10).text
            active = next(float(line.split()[1]) for line in metrics.splitlines()
                          if line.startswith("gatewatch_decisions_active "))
            client.close()
        finally:
            if gateway is not None:
                gateway.terminate()
                try:
                    gateway.wait(15)
                except subprocess.TimeoutExpired:
                    gateway.kill()
            broker.kill()
            broker.wait()
            upstream.shutdown()

    result = {
        "decisions_published": args.decisions + 1,
        "decisions_active": int(active),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_peak_mb": round(rss_peak, 1),
        "rss_per_decision_bytes": round((rss_after - rss_before) * 1024 * 1024 / max(1, args.decisions)),
        "publish_s": round(published_s, 2),
        "publish_to_enforced_s": round(enforced_s, 2),
        "target_mb": TARGET_MB,
        "meets_target": rss_after <= TARGET_MB,
        "seed": SEED,
        "python": sys.version.split()[0],
    }
    rows = [("decisions published", f"{result['decisions_published']:,}"),
            ("decisions active (gateway)", f"{result['decisions_active']:,}"),
            ("RSS before, MiB", f"{rss_before:.1f}"),
            ("RSS after, MiB", f"{rss_after:.1f}"),
            ("RSS peak (VmHWM), MiB", f"{rss_peak:.1f}"),
            ("bytes per decision", f"{result['rss_per_decision_bytes']:,}"),
            ("publish, s", f"{published_s:.2f}"),
            ("publish → last enforced, s", f"{enforced_s:.2f}"),
            (f"RSS ≤ {TARGET_MB:.0f} MiB", "yes" if result["meets_target"] else "NO")]
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
