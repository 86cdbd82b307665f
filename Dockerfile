# mitmproxy is pinned to 11.0.2 (last release for Python 3.11); same image for gateway and worker.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e .
