"""ClickHouse storage for gatewatch: schema (numbered SQL migrations), client
factory (embedded chDB or a ClickHouse server, same SQL for both), batch
writers and named read queries.

Imports only :mod:`gatewatch`. The worker process owns the embedded store
(chDB allows one process per data directory); other processes read through
the worker's query API (``streams/web.py``).
"""
