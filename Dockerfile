# syntax=docker/dockerfile:1
# The gatewatch image: gateway (python -m inline.serve), worker (python -m streams worker),
# the store's one-shot migrations (python -m storage migrate) and the gatewatch CLI.
#
# Python 3.11 because mitmproxy is pinned to 11.0.2 in pyproject.toml, the last release that
# runs on 3.11 (12.x needs 3.12); `pip install .` installs exactly the pins of pyproject.toml.
# Three stages: the virtualenv, the geo-IP data (fetched with npm, which stays out of the
# final image), and the runtime image with neither compilers nor npm.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gatewatch ./gatewatch
COPY inline ./inline
COPY streams ./streams
COPY detectors ./detectors
COPY storage ./storage
COPY dashboards ./dashboards
RUN pip install . && pip check

# DB-IP Lite city + ASN data (CC-BY-4.0, IP Geolocation by DB-IP), the pinned npm packages
# of gatewatch/geoip.py.
FROM build AS geo
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/*
RUN GATEWATCH_GEO__DIR=/opt/gatewatch/geo gatewatch geo install

FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
COPY --from=geo /opt/gatewatch/geo /opt/gatewatch/geo
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWATCH_GEO__DIR=/opt/gatewatch/geo
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/gatewatch gatewatch
# Relative paths of the settings (event spool, Faust data, chDB when no server is set) land here.
WORKDIR /var/lib/gatewatch
USER gatewatch
# Gateway traffic, gateway metrics (admin_port), worker web API and metrics (worker_web_port).
EXPOSE 8080 9464 6066
CMD ["gatewatch", "--help"]
