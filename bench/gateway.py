"""Per-request cost of the gateway: direct upstream vs bare mitmdump vs gatewatch.

Starts nginx as a fast upstream (Debian ``nginx-light``) and a Tansu broker,
then runs ``wrk`` (Debian ``wrk``) for a fixed duration against:

1. ``direct``       — nginx itself;
2. ``mitmdump``     — bare ``mitmdump --mode reverse`` (its ~31 built-in addons, no script);
3. ``gw-mitmdump``  — gatewatch's addons loaded into mitmdump with ``-s``;
4. ``gw-minimal``   — gatewatch on its minimal master (``python -m inline.serve``);
5. ``gw-minimal-jwt`` — the same with JWT bearer tokens instead of the API key;
6. ``gw-minimal×N`` — N such processes sharing the port with ``SO_REUSEPORT``
   (with Redis-shared rate limits when ``--redis`` is given).

Every gatewatch run has the full current policy on the request path: API-key
authentication (``gw-minimal-jwt``: an RS256 JWT verified against a JWKS that
nginx serves, keys cached), geo enrichment, GCRA rate limits (set high so that nothing is refused: the
cost of checking is measured, not refusals), decision enforcement with
``--decisions`` active decisions for other addresses, and event shipping to
the broker. It prints req/s, p50/p99 latency and RSS, the ratio to bare
mitmdump, and the p50 latency added over direct at one connection, then
writes ``bench/results/gateway.json``.

Targets (issue 3): full policy ≥ 1.0× bare mitmdump req/s; added p50 at one
connection ≤ 1.5 ms over direct.

Run: ``apt-get install nginx-light wrk`` once, then
``.venv/bin/python bench/gateway.py [--duration 10] [--connections 16] [--workers 2]``.
Traffic goes to 127.0.0.1 only, for a fixed duration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gatewatch.broker import create_topics, start_tansu
from gatewatch.commands import gateway_command, serve_command
from gatewatch.events import Decision
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import load_settings
from gatewatch.signing import DecisionSigner

RESULTS = Path(__file__).parent / "results" / "gateway.json"
NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /jwks.json {{ alias {prefix}/jwks.json; }}
        location / {{ return 200 '{{"ok":true}}'; }}
    }}
}}
"""


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if not path:
        sys.exit(f"{tool} not found: apt-get install nginx-light wrk redis-server")
    return path


def rss_mb(pids: list[int]) -> float:
    """Sum of VmRSS of ``pids`` in MB (from /proc)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _ms(text: str) -> float:
    value, unit = float(re.match(r"[\d.]+", text).group()), re.sub(r"[\d.]+", "", text)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, duration: int, connections: int, header: str) -> dict:
    """Run wrk with one request ``header`` (the credential); return req/s, p50/p99 latency (ms),
    non-2xx count."""
    out = subprocess.run([need("wrk"), "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-H", header, url], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def jwt_material(tmp: Path, issuer: str) -> str:
    """Write an RS256 JWKS to ``tmp/jwks.json`` (nginx serves it) and return a token signed
    with its key, valid for an hour."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "alg": "RS256", "use": "sig"})
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (tmp / "jwks.json").chmod(0o644)
    now = int(time.time())
    return jwt.encode({"sub": "bench-user", "iss": issuer, "aud": "bench", "iat": now, "exp": now + 3600},
                      key, algorithm="RS256", headers={"kid": "bench"})


def publish_decisions(bootstrap: str, topic: str, n: int, signer: DecisionSigner) -> None:
    """``n`` active ip bans for addresses in 10.0.0.0/8 (never the benchmark client), signed
    by ``signer`` (the gateway ignores unsigned decisions)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    now = datetime.now(timezone.utc)
    for i in range(n):
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        d = Decision(scope="ip", value=ip, created_at=now, expires_at=now + timedelta(hours=1),
                     detector="bench", reason="bench")
        key, value = d.key().encode(), d.to_json()
        producer.send(topic, key=key, value=value, headers=signer.headers(key, value))
    producer.flush()
    producer.close()


class Procs:
    """Child processes to stop at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen] | None = None) -> None:
        for proc in procs if procs is not None else list(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if proc in self.procs:
                self.procs.remove(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="processes for the SO_REUSEPORT run")
    parser.add_argument("--decisions", type=int, default=10_000, help="active decisions loaded")
    parser.add_argument("--redis", action="store_true", help="share the N processes' rate limits in Redis")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    tmp.chmod(0o755)  # nginx's workers (an unprivileged user) serve jwks.json from here
    procs = Procs()
    results: dict[str, dict] = {}
    try:
        nginx_port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(prefix=tmp, port=nginx_port))
        procs.start([need("nginx"), "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-g", "daemon off;"])
        wait_for_port("127.0.0.1", nginx_port)
        upstream = f"http://127.0.0.1:{nginx_port}"

        broker_port = free_port()
        procs.procs.append(start_tansu("127.0.0.1", broker_port, tmp / "tansu.log"))
        wait_for_port("127.0.0.1", broker_port)
        api_key = add_key(tmp / "keys.toml", "key_bench", owner="bench")
        key_header = f"X-API-Key: {api_key}"
        token = jwt_material(tmp, issuer="https://bench.invalid/")
        bearer_header = f"Authorization: Bearer {token}"
        settings = load_settings(bootstrap_servers=f"127.0.0.1:{broker_port}", upstream=upstream,
                                 keys_file=tmp / "keys.toml", public_routes=[], admin_port=0,
                                 spool_dir=tmp / "spool",
                                 jwt={"jwks_url": f"{upstream}/jwks.json", "issuer": "https://bench.invalid/",
                                      "audience": ["bench"]},
                                 ip_rate_limit={"rate_per_s": 1e6, "burst": 1_000_000},
                                 principal_rate_limit={"rate_per_s": 1e6, "burst": 1_000_000})
        create_topics(settings)
        publish_decisions(settings.bootstrap_servers, settings.topic_decisions, args.decisions,
                          DecisionSigner.from_settings(settings))
        env = os.environ | settings.to_env()

        def measure(name: str, argvs: list[list[str]], port: int, warmup_s: float = 2.0,
                    header: str = key_header) -> None:
            started = [procs.start(a, env=env, log=tmp / f"{name}.log") for a in argvs]
            try:
                wait_for_port("127.0.0.1", port, timeout_s=30)
                time.sleep(warmup_s)  # decisions feed loaded, producer connected
                url = f"http://127.0.0.1:{port}/items/1"
                wrk(url, 2, args.connections, header)  # warm-up run
                r = wrk(url, args.duration, args.connections, header)
                r["rss_mb"] = rss_mb([p.pid for p in started])
                r["p50_1conn_ms"] = wrk(url, max(3, args.duration // 2), 1, header)["p50_ms"]
                results[name] = r
                print(f"  {name:<14} {r['rps']:>9.0f} req/s", flush=True)
            finally:
                procs.stop(started)

        print("measuring (wrk, 127.0.0.1):", flush=True)
        direct = {"rps": 0.0}
        r = wrk(f"{upstream}/items/1", args.duration, args.connections, key_header)
        r["rss_mb"] = 0.0
        r["p50_1conn_ms"] = wrk(f"{upstream}/items/1", max(3, args.duration // 2), 1, key_header)["p50_ms"]
        results["direct"] = direct = r
        print(f"  {'direct':<14} {r['rps']:>9.0f} req/s", flush=True)

        mitmdump = str(Path(sys.executable).parent / "mitmdump")
        port = free_port()
        measure("mitmdump", [[mitmdump, "--mode", f"reverse:{upstream}@127.0.0.1:{port}", "-q"]], port)

        port = free_port()
        s = settings.model_copy(update={"listen_port": port})
        measure("gw-mitmdump", [gateway_command(s)], port)

        port = free_port()
        s = settings.model_copy(update={"listen_port": port})
        measure("gw-minimal", [serve_command(s)], port)

        port = free_port()
        s = settings.model_copy(update={"listen_port": port})
        measure("gw-minimal-jwt", [serve_command(s)], port, header=bearer_header)

        port = free_port()
        s = settings.model_copy(update={"listen_port": port})
        if args.redis:
            redis_port = free_port()
            procs.start([need("redis-server"), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                         "--appendonly", "no"])
            wait_for_port("127.0.0.1", redis_port)
            s = s.model_copy(update={"rate_limit_redis_url": f"redis://127.0.0.1:{redis_port}/0"})
        measure(f"gw-minimal×{args.workers}", [serve_command(s, reuse_port=True)] * args.workers, port,
                warmup_s=3.0)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    bare = results["mitmdump"]["rps"]
    print()
    print(f"{'run':<14} {'req/s':>9} {'×bare':>6} {'p50 ms':>7} {'p99 ms':>7} {'p50@1c':>7} "
          f"{'+p50@1c':>8} {'RSS MB':>7} {'non-2xx':>8}")
    for name, r in results.items():
        print(f"{name:<14} {r['rps']:>9.0f} {r['rps'] / bare:>6.2f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{r['p50_1conn_ms']:>7.2f} {r['p50_1conn_ms'] - direct['p50_1conn_ms']:>8.2f} "
              f"{r['rss_mb']:>7.0f} {r['non_2xx']:>8}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "args": vars(args), "results": results,
        "targets": {"gw_minimal_vs_bare": 1.0, "added_p50_1conn_ms": 1.5},
    }, indent=2))
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
