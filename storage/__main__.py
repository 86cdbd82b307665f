"""``python -m storage migrate``: apply the schema migrations and the retention settings once.

The production stack runs it as a one-shot service before the workers start
(docker-compose.yml, service ``migrate``), so that several workers starting
together never apply a migration at the same time (see
:func:`storage.migrations.migrate`). Settings come from ``GATEWATCH_*`` as
everywhere (``GATEWATCH_CLICKHOUSE_URL``, ``GATEWATCH_REQUESTS_TTL_DAYS``...).
Exit status 0 when the store is up to date, 1 when it cannot be opened or a
statement fails (the error is printed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gatewatch.settings import load_settings
from storage.client import StorageError, describe, get_client
from storage.migrations import migrate
from storage.retention import apply_retention


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m storage", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["migrate"], help="migrate: apply migrations and retention")
    parser.parse_args(argv)
    settings = load_settings()
    try:
        client = get_client(settings)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        applied = migrate(client)
        changed = apply_retention(client, settings)
    except Exception as exc:  # engine errors of any driver type: report them, exit 1
        print(f"error: migrating {describe(settings)} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"store {describe(settings)}: migrations applied: {', '.join(applied) or 'none'}; "
          f"retention changed: {'; '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
