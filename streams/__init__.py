"""The gatewatch stream worker (Faust): topics, consumers that run detectors and
emit detections/decisions, the ClickHouse sink and the worker's read API.

The request topic is read by ``requests_consumer`` (aiokafka batches: the hot
path, parsed once), which hands each batch to ``detect_requests`` (per-IP
credential stuffing and BOLA, and re-keying (``rekey``) of what the other detectors
need) and to the ClickHouse sink. The re-keyed topics are read the same way
(``rekeyed_consumer``), each by its detectors. All of them
(``checkpointed_consumer``, started by ``consumers``) commit offsets and replay
points (``checkpoints``) once what they read is handled, so a restart rebuilds
the windows exactly; re-keyed events sent twice around a crash are dropped by
their origin (``resends``).

Detectors by topic (one module each, thin: the detector per partition, its replay span):

* ``detect_logins`` — aggregate credential-stuffing rules over every login (one partition);
* ``detect_bola`` — BOLA enumeration on the request topic itself (keyed by principal);
* ``detect_latency`` — latency regression over samples re-keyed by route;
* ``detect_geo`` — geo anomalies (impossible travel, new country) over requests
  re-keyed by principal, located with the DB-IP city database;
* ``detect_behaviour`` — behaviour outliers: per-principal 5-minute windows scored by the
  Isolation Forest that ``gatewatch train`` fitted (shadow by default; off without a model file).

Faust agents:

* ``alert`` — detections and decisions to Alertmanager or a webhook (when configured);
* ``sink`` — detections and decisions into ClickHouse (requests come from the
  request consumer), through the store spool (``store_spool``) while ClickHouse fails.

Detections go through one decision policy (``decide``); merged re-keyed streams
give their detectors a low watermark as clock (``watermarks``, ``merged``).

Start it with ``python -m streams worker -l info`` (see
:func:`gatewatch.commands.worker_command`); settings come from ``GATEWATCH_*``
environment variables.
"""
