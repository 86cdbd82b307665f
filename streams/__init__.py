"""The gatewatch stream worker (Faust): topics, agents that run detectors and
emit detections/decisions, the ClickHouse sink and the worker's read API.

Start it with ``python -m streams worker -l info`` (see
:func:`gatewatch.commands.worker_command`); settings come from ``GATEWATCH_*``
environment variables.
"""
