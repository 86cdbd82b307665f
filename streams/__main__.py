"""``python -m streams worker -l info``: the Faust CLI of the gatewatch app.

Importing the agent and view modules registers them on the app.
"""

from streams import detect_credential_stuffing, sink, web  # noqa: F401  (register agents/views)
from streams.app import app


def main() -> None:
    """Run Faust's command line (``worker``, ``agents``, ...) for the gatewatch app."""
    app.main()


if __name__ == "__main__":
    main()
