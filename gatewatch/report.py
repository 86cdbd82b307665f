"""The HTML report of ``gatewatch report``: what happened in a time window, as pictures.

:func:`gather` runs the ``report_*`` named queries of ``storage/queries.py``
through a :class:`~gatewatch.store_reader.StoreReader` (the running worker's
read API, or the store directly); :func:`render_html` turns the result into
one self-contained HTML file: the plots are PNGs drawn with matplotlib and
embedded as ``data:`` URIs, the style sheet is inline, nothing is loaded from
the network, so the file can be mailed or opened offline.

Sections: summary numbers, traffic by answering party, requests blocked by
decisions, detections by detector, top offenders (plot and tables: IPs,
networks, principals, ASNs), a world map of detections and the latest
decisions with a ``gatewatch explain`` hint each.

The map is equirectangular (longitude, latitude in degrees). Country shapes
and centroids come from ``gatewatch/data/world.json``, built once from Natural
Earth (public domain) by ``gatewatch/data/make_world.py`` and shipped in the
package: countries are shaded by their number of detections, and a bubble
whose area grows with the count sits on each country's centroid, so small
countries show too. Detections carry no country: each is placed in the
countries of its sample requests (or its value, for a country-scoped one).
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment

#: Bucket widths (seconds) a report may use; the smallest giving at most MAX_BUCKETS wins.
STEPS = (60, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)
MAX_BUCKETS = 150
#: Offender kinds of ``report_top_offenders``, in the order the report shows them.
OFFENDER_KINDS = (("ip", "IP addresses"), ("prefix", "Networks (/24, /64)"),
                  ("principal", "Principals (API keys, token subjects)"), ("asn", "Autonomous systems"))
#: Colours of the answering parties (events.AnsweredBy); others get the default cycle.
ANSWERED_BY_COLOURS = {"upstream": "#4c9f70", "auth": "#f2a541", "rate_limit": "#e8d44d",
                       "decision": "#c8102e", "bad_request": "#7b68ee", "error": "#333333"}
WORLD_FILE = Path(__file__).with_name("data") / "world.json"


@dataclass
class ReportData:
    """Everything a report shows, as the named queries returned it."""

    since: datetime
    until: datetime
    step_s: int
    totals: dict[str, int]
    traffic: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    detections: list[dict[str, Any]]
    offenders: list[dict[str, Any]]
    countries: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    source: str = ""
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def choose_step(since: datetime, until: datetime) -> int:
    """Bucket width in seconds: the smallest of :data:`STEPS` with at most :data:`MAX_BUCKETS` buckets."""
    span = max((until - since).total_seconds(), 1.0)
    for step in STEPS:
        if span / step <= MAX_BUCKETS:
            return step
    return math.ceil(span / MAX_BUCKETS / 86_400) * 86_400


def gather(reader: Any, since: datetime, until: datetime, *, top: int = 10, decisions: int = 25,
           step_s: int | None = None) -> ReportData:
    """Run the report's named queries over ``[since, until)`` with ``reader`` (a
    :class:`~gatewatch.store_reader.StoreReader`). Raises what the reader raises."""
    step = step_s or choose_step(since, until)
    window = {"since": since.isoformat(), "until": until.isoformat()}
    totals = reader.query("report_totals", **window)
    data = ReportData(
        since=since, until=until, step_s=step,
        totals={k: int(v or 0) for k, v in (totals[0] if totals else {}).items()},
        traffic=reader.query("report_traffic", step=step, **window),
        blocks=reader.query("report_blocks", step=step, **window),
        detections=reader.query("report_detections_by_detector", step=step, **window),
        offenders=reader.query("report_top_offenders", limit=top, **window),
        countries=reader.query("report_detections_by_country", **window),
        decisions=reader.query("report_decisions", limit=decisions, **window),
    )
    settings = getattr(reader, "settings", None)
    if getattr(reader, "via", "") == "worker":
        data.source = "through the running worker's read API"
    elif settings is not None and settings.clickhouse_url:
        data.source = "from the ClickHouse server"
    elif settings is not None:
        data.source = f"directly from the chDB directory {settings.chdb_path}"
    return data


# ----------------------------------------------------------------------------- plots


def _parse_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _buckets(since: datetime, until: datetime, step: int) -> list[datetime]:
    """Bucket starts covering the window, aligned like ClickHouse's toStartOfInterval (epoch)."""
    first = math.floor(since.timestamp() / step) * step
    last = math.ceil(until.timestamp() / step) * step
    return [datetime.fromtimestamp(t, tz=timezone.utc) for t in range(int(first), int(last), step)]


def _pivot(rows: list[dict[str, Any]], label: str, value: str, buckets: list[datetime],
           step: int) -> dict[str, list[float]]:
    """``{series label: [value per bucket]}``, zero where a bucket has no row."""
    index = {int(b.timestamp()) // step: i for i, b in enumerate(buckets)}
    series: dict[str, list[float]] = {}
    for row in rows:
        i = index.get(int(_parse_ts(row["time"]).timestamp()) // step)
        if i is None:
            continue
        series.setdefault(str(row[label]), [0.0] * len(buckets))[i] += float(row[value] or 0)
    return series


def _figure(width: float = 10.0, height: float = 3.4) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777", fontsize=12)


def _time_axis(ax: Any, since: datetime, until: datetime) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=timezone.utc, minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    ax.set_xlim(since, until)
    ax.set_xlabel("time (UTC)")
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.yaxis.set_major_locator(_integer_locator())
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, min_n_ticks=1)


def stacked_bars_png(rows: list[dict[str, Any]], label: str, value: str, since: datetime, until: datetime,
                     step: int, *, ylabel: str, empty: str, colours: dict[str, str] | None = None,
                     order: list[str] | None = None) -> str:
    """A stacked bar chart over time of ``value`` per ``label`` (one bar per bucket) as a PNG URI."""
    buckets = _buckets(since, until, step)
    series = _pivot(rows, label, value, buckets, step)
    fig = _figure()
    ax = fig.add_subplot()
    if not any(any(v) for v in series.values()):
        _no_data(ax, empty)
    else:
        names = [n for n in (order or []) if n in series] + sorted(n for n in series if n not in (order or []))
        bottom = [0.0] * len(buckets)
        palette = iter(["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                        "#bcbd22", "#7f7f7f", "#d62728"] * 4)
        for name in names:
            colour = (colours or {}).get(name) or next(palette)
            ax.bar(buckets, series[name], width=step / 86_400 * 0.92, bottom=bottom, align="edge",
                   label=f"{name} ({int(sum(series[name])):,})", color=colour, linewidth=0)
            bottom = [b + v for b, v in zip(bottom, series[name])]
        ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=min(len(names), 4))
        ax.set_ylim(0, max(bottom) * 1.25)
    _time_axis(ax, since, until)
    ax.set_ylabel(ylabel)
    return _png(fig)


def offenders_png(offenders: list[dict[str, Any]], top: int = 8) -> str:
    """Four horizontal bar charts (IPs, networks, principals, ASNs): suspicious requests
    and, darker, those blocked by a decision."""
    fig = _figure(10.0, 6.4)
    axes = fig.subplots(2, 2)
    for ax, (kind, title) in zip(axes.flat, OFFENDER_KINDS):
        rows = [r for r in offenders if r["kind"] == kind][:top]
        ax.set_title(title, fontsize=10, loc="left")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if not rows:
            _no_data(ax, "none")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        slots = max(len(rows), 5)  # the same bar height in every panel, the worst on top
        ys = [slots - 1 - i for i in range(len(rows))]
        ax.barh(ys, [r["suspicious"] for r in rows], height=0.7, color="#f4a3a8")
        ax.barh(ys, [r["blocked"] for r in rows], height=0.7, color="#c8102e")
        ax.set_yticks(ys, [_short(str(r["offender"]), 26) for r in rows])
        ax.set_ylim(-0.6, slots - 0.4)
        ax.tick_params(axis="y", labelsize=8, length=0)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_locator(_integer_locator())
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
    fig.supxlabel("requests: 401/403/429 answers and failed logins (light), blocked by a decision (dark)",
                  fontsize=9)
    return _png(fig)


@lru_cache(maxsize=1)
def world() -> dict[str, Any]:
    """The shipped country shapes and centroids (built by ``gatewatch/data/make_world.py``)."""
    return json.loads(WORLD_FILE.read_text())


def _rings_for_drawing(ring: list[list[float]]) -> list[list[tuple[float, float]]]:
    """A ring, or for one crossing the antimeridian (Russia, Fiji) the ring unwrapped
    east of 180° and a copy shifted by -360°: the axes clip each to the map."""
    xs = [p[0] for p in ring]
    if max(xs) - min(xs) <= 180:
        return [[(x, y) for x, y in ring]]
    east = [(x + 360 if x < 0 else x, y) for x, y in ring]
    return [east, [(x - 360, y) for x, y in east]]


def world_map_png(countries: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The detections-per-country map as a PNG URI, and the codes it could not place."""
    from matplotlib import colormaps, patheffects
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    data = world()
    counts = {str(r["country"]).upper(): int(r["detections"]) for r in countries if r.get("country")}
    top = max(counts.values(), default=0)
    cmap = colormaps["Reds"]
    norm = Normalize(vmin=0, vmax=max(top, 1))
    fig = _figure(10.0, 4.5)
    ax = fig.add_subplot()
    ax.set_facecolor("#eef4f8")
    polys, faces = [], []
    for shape in data["shapes"]:
        if shape["code"] == "AQ":
            continue  # Antarctica: below the map
        count = counts.get(shape["code"], 0)
        face = cmap(0.15 + 0.85 * norm(count)) if count else "#dcdcdc"
        for polygon in shape["polygons"]:
            for ring in _rings_for_drawing(polygon[0]):
                polys.append(ring)
                faces.append(face)
    ax.add_collection(PolyCollection(polys, facecolors=faces, edgecolors="white", linewidths=0.4))
    placed = [(code, n, data["centroids"][code]) for code, n in counts.items() if code in data["centroids"]]
    missing = sorted(code for code in counts if code not in data["centroids"])
    for code, n, c in sorted(placed, key=lambda p: -p[1]):
        ax.scatter([c["lon"]], [c["lat"]], s=60 + 1400 * n / max(top, 1), color="#c8102e", alpha=0.55,
                   edgecolors="#7a0019", linewidths=0.8, zorder=3)
        label = ax.annotate(f"{code} {n}", (c["lon"], c["lat"]), xytext=(0, -4), textcoords="offset points",
                            ha="center", va="top", fontsize=8, fontweight="bold", color="#222222", zorder=4)
        label.set_path_effects([patheffects.withStroke(linewidth=2.5, foreground="white")])
    ax.set_xlim(-180, 180)
    ax.set_ylim(-58, 84)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-60, 91, 30))
    ax.tick_params(labelsize=7, colors="#888888")
    ax.grid(color="white", linewidth=0.5)
    ax.set_axisbelow(True)
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    if not counts:
        _no_data(ax, "no detection with a known client country in this window")
    else:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.7, pad=0.01,
                           label="detections")
        bar.locator = _integer_locator()
        bar.update_ticks()
    return _png(fig), missing


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------------------ HTML

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gatewatch report {{ window }}</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
         margin: 0 auto; max-width: 1120px; padding: 24px; background: #fafafa; }
  h1 { margin: 0 0 4px; font-size: 24px; }
  h2 { margin: 32px 0 8px; font-size: 19px; border-bottom: 2px solid #c8102e; padding-bottom: 4px; }
  h3 { margin: 18px 0 6px; font-size: 15px; }
  .meta, .caption, .hint { color: #666; font-size: 12.5px; }
  .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 10px; }
  .card { background: #fff; border: 1px solid #e3e3e3; border-radius: 8px; padding: 10px 14px; }
  .card .num { display: block; font-size: 26px; font-weight: 650; }
  .card .label { color: #555; font-size: 12.5px; }
  .card.alert .num { color: #c8102e; }
  img.plot { width: 100%; height: auto; background: #fff; border: 1px solid #e3e3e3; border-radius: 8px; }
  table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
  th { background: #f1f1f1; font-weight: 600; }
  td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
  code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f3f3; padding: 1px 4px;
         border-radius: 3px; white-space: nowrap; }
  .grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 12px 20px; }
  @media (max-width: 800px) { .grid2 { grid-template-columns: 1fr; } }
  .badge { border-radius: 10px; padding: 1px 8px; font-size: 11.5px; white-space: nowrap; }
  .badge.on { background: #c8102e; color: #fff; } .badge.off { background: #e5e5e5; color: #555; }
  footer { margin-top: 36px; color: #777; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>gatewatch report</h1>
  <div class="meta">{{ window }} ({{ span }}); buckets of {{ step }}; generated {{ generated }};
    store read {{ source }}.</div>
</header>

<section id="summary">
  <h2>Summary</h2>
  <div class="cards">
  {% for c in cards %}
    <div class="card{% if c.alert %} alert{% endif %}" data-metric="{{ c.key }}" data-value="{{ c.value }}">
      <span class="num">{{ "{:,}".format(c.value) }}</span><span class="label">{{ c.label }}</span></div>
  {% endfor %}
  </div>
</section>

<section id="traffic">
  <h2>Traffic</h2>
  <img class="plot" alt="Requests over time, stacked by who answered them" src="{{ plots.traffic }}">
  <p class="caption">Requests per {{ step }}, stacked by who answered them: <b>upstream</b> (passed to the
    API), <b>auth</b> (refused credentials), <b>rate_limit</b> (429), <b>decision</b> (blocked or throttled by
    a ban), <b>bad_request</b>, <b>error</b>.</p>
</section>

<section id="blocks">
  <h2>Blocks</h2>
  <img class="plot" alt="Requests blocked by decisions over time" src="{{ plots.blocks }}">
  <p class="caption">Requests refused by a decision, per kind of decision (action, scope and the detector
    that made it). {{ "{:,}".format(totals.rate_limited) }} more were answered 429 by the rate limiter.</p>
</section>

<section id="detections">
  <h2>Detections by detector</h2>
  <img class="plot" alt="Detections over time by detector" src="{{ plots.detections }}">
  {% if detectors %}<p class="caption">In the window:
    {% for name, n in detectors %}<b>{{ name }}</b> {{ n }}{% if not loop.last %} · {% endif %}{% endfor %}.</p>
  {% endif %}
</section>

<section id="offenders">
  <h2>Top offenders</h2>
  <img class="plot" alt="Top offenders by suspicious and blocked requests" src="{{ plots.offenders }}">
  <p class="caption">Ranked by suspicious requests (answered 401, 403 or 429, or a failed login);
    every <code>gatewatch explain VALUE</code> shows the decisions about one of them.</p>
  <div class="grid2">
  {% for kind, title, rows in offender_tables %}
    <div data-kind="{{ kind }}">
    <h3>{{ title }}</h3>
    {% if rows %}
    <table>
      <tr><th>{{ kind }}</th><th>country</th>{% if kind != 'asn' %}<th class="n">ASN</th>{% endif %}
        {% if kind != 'ip' %}<th class="n">IPs</th>{% endif %}<th class="n">requests</th>
        <th class="n">suspicious</th><th class="n">failed logins</th><th class="n">blocked</th></tr>
      {% for r in rows %}
      <tr><td><code>{{ r.offender }}</code></td><td>{{ r.country }}</td>
        {% if kind != 'asn' %}<td class="n">{{ r.asn or "" }}</td>{% endif %}
        {% if kind != 'ip' %}<td class="n">{{ r.ips }}</td>{% endif %}
        <td class="n">{{ "{:,}".format(r.requests) }}</td><td class="n">{{ "{:,}".format(r.suspicious) }}</td>
        <td class="n">{{ "{:,}".format(r.failed_logins) }}</td><td class="n">{{ "{:,}".format(r.blocked) }}</td></tr>
      {% endfor %}
    </table>
    {% else %}<p class="caption">none in this window</p>{% endif %}
    </div>
  {% endfor %}
  </div>
</section>

<section id="map">
  <h2>Where detections come from</h2>
  <img class="plot" alt="World map of detections per country" src="{{ plots.map }}">
  <p class="caption">Detections per client country: the countries of each detection's sample requests
    (a detection with samples from two countries counts in both), or the country of a country-scoped
    detection. Shade and bubble size grow with the count.
    {% if missing %}Not on the map (no centroid known): {{ missing | join(", ") }}.{% endif %}</p>
  {% if countries %}
  <table style="max-width: 420px">
    <tr><th>country</th><th></th><th class="n">detections</th></tr>
    {% for r in countries %}<tr><td><code>{{ r.country }}</code></td><td>{{ r.name }}</td>
      <td class="n">{{ r.detections }}</td></tr>{% endfor %}
  </table>
  {% endif %}
</section>

<section id="decisions">
  <h2>Latest decisions</h2>
  {% if decisions %}
  <table>
    <tr><th>created</th><th>action</th><th>scope</th><th>value</th><th>detector</th><th>reason</th>
      <th>expires</th><th>at the end</th><th>why?</th></tr>
    {% for d in decisions %}
    <tr data-decision="{{ d.id }}"><td>{{ d.created }}</td><td>{{ d.action }}</td><td>{{ d.scope }}</td>
      <td><code>{{ d.value }}</code></td>
      <td>{{ d.detector or "manual" }} <span class="hint">({{ d.origin }})</span></td>
      <td>{{ d.reason }}</td><td>{{ d.expires }}</td>
      <td>{% if d.in_force %}<span class="badge on">in force</span>
        {%- else %}<span class="badge off">over</span>{% endif %}</td>
      <td><code>{{ d.hint }}</code></td></tr>
    {% endfor %}
  </table>
  <p class="caption">The {{ decisions | length }} latest made in the window, newest first; "in force" means the
    latest decision for its scope and value had not expired at the end of the window.</p>
  {% else %}<p class="caption">No decision was made in this window.</p>{% endif %}
</section>

<footer>
  gatewatch report · self-contained: no script, no external resource.
  Map: equirectangular projection of Natural Earth country shapes (public domain), via world-atlas 2.0.2.
  Country of a client: IP Geolocation by DB-IP (CC-BY-4.0), looked up by the gateway.
</footer>
</body>
</html>
"""

SUMMARY_CARDS = (("requests", "requests", False), ("blocked", "blocked by a decision", True),
                 ("rate_limited", "rate-limited (429)", True), ("auth_failures", "auth failures", True),
                 ("detections", "detections", True), ("decisions", "decisions made", True),
                 ("active_decisions", "decisions in force at the end", False),
                 ("clients", "client IPs", False), ("failed_logins", "failed logins", False),
                 ("server_errors", "5xx answers", False))


def _fmt_ts(value: Any) -> str:
    return _parse_ts(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _fmt_span(seconds: float) -> str:
    if seconds >= 86_400 and seconds % 3600 == 0:
        days, hours = divmod(int(seconds) // 3600, 24)
        return f"{days} d" + (f" {hours} h" if hours else "")
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min"


def render_html(data: ReportData, *, stack: Path | None = None) -> str:
    """The self-contained HTML page of ``data``; ``stack`` goes into the explain hints."""
    world_png, missing = world_map_png(data.countries)
    args = dict(since=data.since, until=data.until, step=data.step_s)
    plots = {
        "traffic": stacked_bars_png(data.traffic, "answered_by", "requests", **args, ylabel="requests",
                                    empty="no requests in this window", colours=ANSWERED_BY_COLOURS,
                                    order=list(ANSWERED_BY_COLOURS)),
        "blocks": stacked_bars_png(data.blocks, "blocked_by", "requests", **args, ylabel="blocked requests",
                                   empty="no request was blocked by a decision in this window"),
        "detections": stacked_bars_png(data.detections, "detector", "detections", **args, ylabel="detections",
                                       empty="no detections in this window"),
        "offenders": offenders_png(data.offenders),
        "map": world_png,
    }
    detectors: dict[str, int] = {}
    for row in data.detections:
        detectors[row["detector"]] = detectors.get(row["detector"], 0) + int(row["detections"])
    centroids = world()["centroids"]
    stack_flag = f" --stack {stack}" if stack else ""
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(_TEMPLATE).render(
        window=f"{data.since:%Y-%m-%d %H:%M} → {data.until:%Y-%m-%d %H:%M} UTC",
        span=_fmt_span((data.until - data.since).total_seconds()),
        step=_fmt_span(data.step_s),
        generated=f"{data.generated_at:%Y-%m-%d %H:%M:%S} UTC",
        source=data.source or "from the store",
        totals=_Totals(data.totals),
        cards=[{"key": k, "label": label, "value": int(data.totals.get(k, 0)), "alert": alert and data.totals.get(k)}
               for k, label, alert in SUMMARY_CARDS],
        plots=plots,
        detectors=sorted(detectors.items(), key=lambda kv: (-kv[1], kv[0])),
        offender_tables=[(kind, title, [r for r in data.offenders if r["kind"] == kind])
                         for kind, title in OFFENDER_KINDS],
        countries=[{**r, "name": centroids.get(str(r["country"]).upper(), {}).get("name", "")}
                   for r in data.countries[:15]],
        missing=missing,
        decisions=[{**d, "created": _fmt_ts(d["created_at"]), "expires": _fmt_ts(d["expires_at"]),
                    "hint": f"gatewatch explain {d['id']}{stack_flag}"} for d in data.decisions],
    )


class _Totals(dict):
    """Totals with attribute access and 0 for a missing number (for the template)."""

    def __getattr__(self, name: str) -> int:
        return int(self.get(name, 0))


def write_report(data: ReportData, out: Path, *, stack: Path | None = None) -> Path:
    """Render ``data`` and write it to ``out`` (parents created); return ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data, stack=stack), encoding="utf-8")
    return out
