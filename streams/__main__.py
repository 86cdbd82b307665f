"""``python -m streams worker -l info``: the Faust CLI of the gatewatch app.

Importing the agent and view modules registers them on the app.
"""

# Importing registers the agents and views on the app.
from streams import alert, consumers, metrics, sink, web  # noqa: F401
from streams.app import app


def main() -> None:
    """Run Faust's command line (``worker``, ``agents``, ...) for the gatewatch app."""
    app.main()


if __name__ == "__main__":
    main()
