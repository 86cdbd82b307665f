"""Build ``world.json`` (country outlines and centroids for the report's map) from Natural Earth.

Not run at install or report time: its output is shipped in the package, so
``gatewatch report`` draws its map offline. Rebuild it with::

    cd /tmp && npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    python gatewatch/data/make_world.py /tmp/package /usr/share/iso-codes/json/iso_3166-1.json

Sources:

* Country shapes: `world-atlas` 2.0.2 (npm; ISC, © Michael Bostock), TopoJSON
  of **Natural Earth** Admin 0 countries, which are in the public domain
  (naturalearthdata.com). Outlines come from the 1:110m file, centroids from
  the 1:50m file (it also has small countries: Singapore, Malta, Bahrain, ...).
* ISO 3166-1 numeric → alpha-2 codes: Debian's ``iso-codes`` package
  (``/usr/share/iso-codes/json/iso_3166-1.json``). Kosovo, which has no
  numeric code, is mapped to ``XK`` as DB-IP and MaxMind use it.

A centroid is the area centroid of the country's largest polygon (so France
is placed in Europe, not between it and French Guiana, and the USA in the
lower 48), in degrees, rounded to 0.01°.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXTRA_CODES = {"Kosovo": "XK"}


def decode(topo: dict) -> list[tuple[str, str, list[list[list[tuple[float, float]]]]]]:
    """``(numeric id, name, polygons)`` per country; a polygon is a list of rings of (lon, lat)."""
    sx, sy = topo["transform"]["scale"]
    tx, ty = topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)

    def ring(indexes: list[int]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for i in indexes:
            points = arcs[i] if i >= 0 else arcs[~i][::-1]
            out.extend(points if not out else points[1:])
        return out

    countries = []
    for geom in topo["objects"]["countries"]["geometries"]:
        if geom["type"] == "Polygon":
            polygons = [[ring(r) for r in geom["arcs"]]]
        elif geom["type"] == "MultiPolygon":
            polygons = [[ring(r) for r in poly] for poly in geom["arcs"]]
        else:
            continue
        countries.append((str(geom.get("id", "")), geom["properties"]["name"], polygons))
    return countries


def area_centroid(ring: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Area and centroid (lon, lat) of a closed ring (shoelace formula, planar in degrees).

    A ring that spans more than 180° of longitude crosses the antimeridian (Russia, Fiji):
    its western longitudes are shifted by 360° first, and the centroid wrapped back."""
    xs = [x for x, _ in ring]
    if max(xs) - min(xs) > 180:
        ring = [(x + 360 if x < 0 else x, y) for x, y in ring]
    area, lon, lat = _shoelace(ring)
    return area, (lon + 180) % 360 - 180, lat


def _shoelace(ring: list[tuple[float, float]]) -> tuple[float, float, float]:
    a = cx = cy = 0.0
    for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1]):
        cross = x0 * y1 - x1 * y0
        a += cross
        cx += (x0 + x1) * cross
        cy += (y0 + y1) * cross
    a /= 2
    if a == 0:
        xs, ys = zip(*ring)
        return 0.0, sum(xs) / len(xs), sum(ys) / len(ys)
    return abs(a), cx / (6 * a), cy / (6 * a)


def main(atlas_dir: Path, iso_json: Path, out: Path) -> None:
    iso = {c["numeric"]: c["alpha_2"] for c in json.loads(iso_json.read_text())["3166-1"]}

    def code(numeric: str, name: str) -> str:
        return iso.get(numeric.zfill(3), EXTRA_CODES.get(name, ""))

    centroids: dict[str, dict] = {}
    for numeric, name, polygons in decode(json.loads((atlas_dir / "countries-50m.json").read_text())):
        alpha2 = code(numeric, name)
        if not alpha2:
            continue
        area, lon, lat = max(area_centroid(poly[0]) for poly in polygons)
        if area > centroids.get(alpha2, {}).get("area", -1):  # Australia, not Ashmore and Cartier Is.
            centroids[alpha2] = {"name": name, "lon": round(lon, 2), "lat": round(lat, 2), "area": area}
    for entry in centroids.values():
        del entry["area"]
    shapes: list[dict] = []
    for numeric, name, polygons in decode(json.loads((atlas_dir / "countries-110m.json").read_text())):
        shapes.append({"code": code(numeric, name), "name": name,
                       "polygons": [[[[round(x, 2), round(y, 2)] for x, y in r] for r in poly]
                                    for poly in polygons]})
    data = {
        "source": ("Natural Earth Admin 0 countries (public domain), via world-atlas 2.0.2 (ISC): "
                   "outlines 1:110m, centroids 1:50m (largest polygon); ISO codes from Debian iso-codes. "
                   "Built by gatewatch/data/make_world.py."),
        "centroids": dict(sorted(centroids.items())),
        "shapes": shapes,
    }
    out.write_text(json.dumps(data, separators=(",", ":")))
    print(f"{out}: {len(centroids)} centroids, {len(shapes)} shapes, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]),
         Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).with_name("world.json"))
