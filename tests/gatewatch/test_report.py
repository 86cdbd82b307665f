"""``gatewatch report`` renders a self-contained HTML report from a stopped stack's store.

The store holds the dashboards' seed (four hours of traffic with a credential-stuffing
attack, detections of four detectors, decisions of five scopes; see
``tests/dashboards/seed_data.py``) plus one request whose principal is an HTML tag. The
command runs as a real subprocess with ``--stack`` pointing at the stopped stack, so
it reads the chDB directory directly; every number the page shows is recomputed here
from the seeded records.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from gatewatch.decision_feed import is_lift
from gatewatch.netutil import free_port
from gatewatch.report import ReportData, choose_step, render_html, world
from gatewatch.settings import load_settings
from storage.client import get_client
from storage.migrations import migrate
from storage.writer import write_decisions, write_detections, write_requests
from tests.dashboards.seed_data import RANGE_TO, SEED_FROM, Seed, build_seed

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")
SINCE, UNTIL = SEED_FROM, RANGE_TO  # 2025-03-01 08:00 → 12:00 UTC: the whole seed
SECTIONS = ("summary", "traffic", "blocks", "detections", "offenders", "map", "decisions")
HOSTILE = '<img src="https://evil.example/x.png">'


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | {"COLUMNS": "200"}


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GATEWATCH, "report", *args], env=_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _stack_file(run_dir: Path, chdb: Path) -> Path:
    """A stack.json whose broker and worker ports answer nothing: the stack is stopped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stack.json").write_text(json.dumps({
        "bootstrap_servers": f"127.0.0.1:{free_port()}", "worker_web_host": "127.0.0.1",
        "worker_web_port": free_port(), "gateway_url": "", "chdb_path": str(chdb), "metrics_urls": []}))
    return run_dir


@dataclass
class Rendered:
    seed: Seed
    stack: Path
    html: str
    stdout: str


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The seed written to a chDB store (closed again), and the report of the whole seed."""
    root = tmp_path_factory.mktemp("report")
    seed = build_seed()
    seed.event(SINCE + timedelta(hours=1), "192.0.2.77", "NL", 1136, "GET", "/users/{id}", "/users/3", 403,
               principal=HOSTILE, auth="ok")
    client = get_client(load_settings(chdb_path=root / "chdb", clickhouse_url=None))
    try:
        migrate(client)
        for result in (write_requests(client, seed.events), write_requests(client, seed.events[-300:]),
                       write_detections(client, seed.detections), write_decisions(client, seed.decisions)):
            assert not result.rejected, result.rejected
    finally:
        client.close()
    stack = _stack_file(root / "run", root / "chdb")
    out = root / "out" / "report.html"
    proc = _run("--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "--out", str(out),
                "--stack", str(stack))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Rendered(seed, stack, out.read_text(encoding="utf-8"), proc.stdout)


def _in_window(ts: datetime) -> bool:
    return SINCE <= ts < UNTIL


def _expected_totals(seed: Seed) -> dict[str, int]:
    events = [e for e in seed.events if _in_window(e.ts)]
    latest: dict[tuple[str, str], object] = {}
    for d in sorted((d for d in seed.decisions if d.created_at < UNTIL), key=lambda d: (d.created_at, d.id)):
        latest[(d.scope, d.value)] = d
    return {
        "requests": len(events),
        "clients": len({ipaddress.ip_address(e.client_ip) for e in events}),
        "blocked": sum(e.answered_by == "decision" for e in events),
        "rate_limited": sum(e.answered_by == "rate_limit" for e in events),
        "auth_failures": sum(e.auth in ("missing", "invalid") for e in events),
        "server_errors": sum(e.status >= 500 for e in events),
        "failed_logins": sum(e.login == "failure" for e in events),
        "detections": len({d.detection_id for d in seed.detections if _in_window(d.ts)}),
        "decisions": len({d.id for d in seed.decisions if _in_window(d.created_at) and not is_lift(d)}),
        "active_decisions": sum(d.expires_at > UNTIL for d in latest.values()),
    }


def _section(html: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    assert match, f"section {name} missing"
    return match.group(1)


def test_the_command_reports_what_it_wrote(rendered: Rendered) -> None:
    totals = _expected_totals(rendered.seed)
    assert f"{totals['requests']:,} requests" in rendered.stdout
    assert f"{totals['detections']:,} detections" in rendered.stdout
    assert "store read directly from the chDB directory" in rendered.stdout


def test_every_section_in_order(rendered: Rendered) -> None:
    positions = [rendered.html.find(f'<section id="{name}">') for name in SECTIONS]
    assert -1 not in positions and positions == sorted(positions)
    for name in SECTIONS:
        assert "<h2>" in _section(rendered.html, name)


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_self_contained(rendered: Rendered) -> None:
    html = rendered.html
    tags = _Tags(html).tags
    names = {tag for tag, _ in tags}
    assert not names & {"script", "link", "iframe", "object", "embed", "base", "video", "audio", "source"}
    refs = [(tag, value) for tag, attrs in tags for name, value in attrs.items()
            if name in ("src", "href", "srcset", "action", "poster", "data")]
    assert [tag for tag, _ in refs] == ["img"] * 5
    assert all((value or "").startswith("data:image/png;base64,") for _, value in refs)
    assert not re.search(r"https?://", re.sub(r"base64,[A-Za-z0-9+/=]+", "", html).replace(
        "https://evil.example", "")), "an address outside the page"
    assert "url(" not in html and "@import" not in html  # no CSS resource either
    # The hostile principal is shown as text, not as an element loading a remote image.
    assert HOSTILE not in html
    assert "&lt;img src=&#34;https://evil.example/x.png&#34;&gt;" in _section(html, "offenders")


def test_plots_are_png_images(rendered: Rendered) -> None:
    images = re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', rendered.html)
    assert len(images) == 5  # traffic, blocks, detections, offenders, map
    for alt, data in images:
        raw = base64.b64decode(data, validate=True)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n"), alt
        with Image.open(io.BytesIO(raw)) as image:
            image.verify()
        with Image.open(io.BytesIO(raw)) as image:
            assert image.format == "PNG" and image.width >= 800 and image.height >= 300, (alt, image.size)
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours and len(colours) > 50, f"{alt}: looks blank"
    # Every section with a plot has its own image.
    for name in ("traffic", "blocks", "detections", "offenders", "map"):
        assert 'src="data:image/png;base64,' in _section(rendered.html, name)


def test_summary_numbers_match_the_seed(rendered: Rendered) -> None:
    shown = {m: int(v) for m, v in re.findall(r'data-metric="(\w+)" data-value="(\d+)"',
                                               _section(rendered.html, "summary"))}
    expected = _expected_totals(rendered.seed)
    assert shown == expected
    # The seed's story, so a wrong seed cannot make both sides agree on nothing.
    assert expected["blocked"] > 3000 and expected["rate_limited"] == 40 and expected["detections"] == 8
    assert expected["decisions"] == 7 and expected["active_decisions"] == 4  # one deleted at 11:40


def _rows(section: str, kind: str) -> list[list[str]]:
    block = re.search(rf'<div data-kind="{kind}">(.*?)</div>', section, re.S)
    assert block, kind
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", block.group(1), re.S)
            if "<td" in row]


def test_top_offenders_tables(rendered: Rendered) -> None:
    section = _section(rendered.html, "offenders")
    events = [e for e in rendered.seed.events if _in_window(e.ts)]
    suspicious = [e for e in events if e.status in (401, 403, 429) or e.login == "failure"]
    by_ip = Counter(e.client_ip for e in suspicious)
    ips = _rows(section, "ip")
    assert len(ips) == 10
    top_ip = ips[0][0].removeprefix("<code>").removesuffix("</code>")
    assert by_ip[top_ip] == max(by_ip.values()) and ips[0][4] == f"{by_ip[top_ip]:,}"
    prefixes = _rows(section, "prefix")
    assert prefixes[0][0] == "<code>203.0.113.0/24</code>" and prefixes[1][0] == "<code>2001:db8:bad::/64</code>"
    v4_attack = [e for e in events if e.client_ip.startswith("203.0.113.")]
    assert prefixes[0][3] == "10" and prefixes[0][4] == f"{len(v4_attack):,}"
    assert prefixes[0][7] == f"{sum(e.answered_by == 'decision' for e in v4_attack):,}"
    asns = _rows(section, "asn")
    assert [r[0] for r in asns[:2]] == ["<code>AS64500</code>", "<code>AS64501</code>"] and asns[0][1] == "RU"
    principals = _rows(section, "principal")
    assert principals[0][0] == "<code>key_03</code>" and principals[0][5] == "40"  # the rate-limited burst


def test_map_counts_detections_by_sample_country(rendered: Rendered) -> None:
    seed = rendered.seed
    country_of = {e.event_id: e.country for e in seed.events}
    expected: Counter[str] = Counter()
    for d in seed.detections:
        if _in_window(d.ts) and d.scope not in ("route", "country"):
            expected.update({country_of[i] for i in d.sample_event_ids if country_of.get(i)})
    assert expected == {"RU": 4, "CN": 2, "JP": 2}
    section = _section(rendered.html, "map")
    shown = dict(re.findall(r"<tr><td><code>(\w\w)</code></td><td>[^<]*</td>\s*<td class=\"n\">(\d+)</td>", section))
    assert {k: int(v) for k, v in shown.items()} == dict(expected)
    assert "Russia" in section and "Not on the map" not in section


def test_latest_decisions_with_explain_hints(rendered: Rendered) -> None:
    section = _section(rendered.html, "decisions")
    in_window = sorted((d for d in rendered.seed.decisions if _in_window(d.created_at)),
                       key=lambda d: d.created_at, reverse=True)
    assert re.findall(r'data-decision="([^"]+)"', section) == [d.id for d in in_window]
    for d in in_window:
        assert f"<code>gatewatch explain {d.id} --stack {rendered.stack}</code>" in section
    assert "dec-later-1" not in section  # created after the window
    row = re.search(r'data-decision="dec-asn-1">(.*?)</tr>', section, re.S).group(1)
    assert "throttle" in row and "badge off" in row  # expired at 11:10
    row = re.search(r'data-decision="dec-prefix-2">(.*?)</tr>', section, re.S).group(1)
    assert "badge on" in row


def test_default_window_and_output_file(stopped_stack: Path, tmp_path: Path) -> None:
    """``--since 24h`` (the default) and ``--out report.html`` (the default) on the explain
    tests' stopped stack: ten failed logins two minutes ago, one detection, one ban."""
    proc = _run("--stack", str(stopped_stack), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    shown = dict(re.findall(r'data-metric="(\w+)" data-value="(\d+)"', html))
    assert shown["requests"] == "10" and shown["failed_logins"] == "10" and shown["blocked"] == "0"
    assert shown["detections"] == "1" and shown["decisions"] == "1" and shown["active_decisions"] == "1"
    assert "credential_stuffing" in _section(html, "detections")
    assert f"gatewatch explain dec-1 --stack {stopped_stack}" in _section(html, "decisions")
    assert "<code>203.0.113.66</code>" in _section(html, "offenders")


def test_bad_window_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run("--since", "1h", "--until", "2h", "--stack", str(tmp_path))
    assert proc.returncode == 2 and "must be before" in proc.stdout
    assert not (tmp_path / "report.html").exists()


def test_an_empty_window_still_renders() -> None:
    since = datetime(2025, 1, 1, tzinfo=timezone.utc)
    until = since + timedelta(hours=24)
    data = ReportData(since=since, until=until, step_s=choose_step(since, until), totals={}, traffic=[],
                      blocks=[], detections=[], offenders=[], countries=[], decisions=[])
    html = render_html(data)
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 5
    assert "No decision was made in this window." in html
    assert all(f'<section id="{name}">' in html for name in SECTIONS)


def test_steps_and_world_data() -> None:
    t0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
    assert choose_step(t0, t0 + timedelta(hours=4)) == 300
    assert choose_step(t0, t0 + timedelta(hours=24)) == 600
    assert choose_step(t0, t0 + timedelta(days=7)) == 2 * 3600
    assert choose_step(t0, t0 + timedelta(days=400)) == 3 * 86_400
    centroids = world()["centroids"]
    assert len(centroids) > 200
    for code, (lat, lon) in {"US": (39, -99), "RU": (62, 100), "FR": (47, 2), "AU": (-26, 134),
                             "JP": (37, 138), "SG": (1.4, 103.8)}.items():
        assert abs(centroids[code]["lat"] - lat) < 3 and abs(centroids[code]["lon"] - lon) < 3, code
