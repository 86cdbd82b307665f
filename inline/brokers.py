"""What the Kafka-using addons (enforcement, event shipping) share.

- :func:`add_bootstrap_option`: the one ``gatewatch_bootstrap_servers``
  option both declare (mitmproxy accepts a repeated declaration only when it
  is identical).
- :func:`quiet_aiokafka_errors`: keeps aiokafka's connection errors from
  stopping mitmdump at start-up.
- :func:`backoff`: retry delays while the broker is unreachable.

Quirk (DESIGN.md, "Known quirks"): mitmdump exits when anything logs at
error level during start-up (its ``errorcheck`` addon). aiokafka logs
``Unable connect to "host:port"`` at error level whenever the broker is not
reachable, and the gateway must keep serving and retrying then. So records
of the ``aiokafka`` loggers are re-emitted at warning level at most; the
gateway's own code logs broker trouble as warnings too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from gatewatch.settings import load_settings

#: First and largest delay between reconnection attempts, seconds.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


def add_bootstrap_option(loader) -> None:
    """Declare ``gatewatch_bootstrap_servers`` (default: the settings' ``bootstrap_servers``)."""
    loader.add_option("gatewatch_bootstrap_servers", str, load_settings().bootstrap_servers,
                      "Kafka bootstrap servers, 'host:port[,host:port...]'.")


def backoff(first_s: float = RETRY_MIN_S, max_s: float = RETRY_MAX_S) -> Iterator[float]:
    """Delays (seconds) between reconnection attempts: doubling from ``first_s`` up to ``max_s``."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


class _DowngradeToWarning(logging.Handler):
    """Passes records on to the root logger's handlers, ERROR and above lowered to WARNING."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno > logging.WARNING:
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        root = logging.getLogger()
        if record.levelno >= root.getEffectiveLevel():
            root.handle(record)


def quiet_aiokafka_errors(logger_name: str = "aiokafka") -> None:
    """Route ``logger_name`` (and its children) through the downgrading handler. Idempotent."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(h, _DowngradeToWarning) for h in logger.handlers):
        logger.addHandler(_DowngradeToWarning())
    logger.propagate = False
