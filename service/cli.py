"""The ``seats`` command: ``api``, ``worker``, ``dev``, ``loadtest``.

``seats api`` and ``seats worker`` import nothing of the load harness: it is not part of the
container image (``.dockerignore``), and the harness's own options are parsed by the harness.
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.logs import configure_logging

HARNESS_MISSING = (
    "seats loadtest: the load harness is not part of this installation (container images leave it out); "
    "run it from a source checkout: pip install '.[loadtest]'"
)


def run_api() -> None:
    """Serve the API with uvicorn; SIGTERM never hangs on open streams (graceful timeout)."""
    from service.app import create_app
    from service.process import freeze_startup_heap
    from service.server import build_server
    from service.settings import load_settings

    configure_logging()
    settings = load_settings()
    app = create_app(settings)
    freeze_startup_heap()
    build_server(app, settings).run()  # drains SSE streams on SIGTERM


def run_loadtest(argv: list[str]) -> int:
    """``seats loadtest ...``: the harness parses its own options (``seats loadtest --help``)."""
    try:
        from loadtest.cli import main as loadtest_main
    except ImportError as exc:  # the package, or its client (aiohttp, the ``loadtest`` extra), is missing
        print(f"{HARNESS_MISSING} ({exc})", file=sys.stderr)
        return 2
    return loadtest_main(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``seats`` console script (a setting it cannot take: a message on stderr, exit 2)."""
    from service.settings import SettingsError

    try:
        _main(argv)
    except SettingsError as exc:
        configure_logging()  # a JSON line like every other (the setting's name, never its value)
        logging.getLogger("seats").error("seats: %s", exc)
        sys.exit(2)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="seats", description="Seat-reservation service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("api", help="serve the HTTP API (production, containers)")
    commands.add_parser("worker", help="run the arq worker under a supervisor (production, containers)")
    dev = commands.add_parser("dev", help="run Redis (private if SEATS_REDIS_URL is unset), API and worker")
    dev.add_argument("--cluster", action="store_true",
                     help="run the data on a private 6-node Redis Cluster (3 primaries, 3 replicas) and the "
                          "payment queue on a private Redis; needs redis-server and redis-cli on PATH")
    commands.add_parser("loadtest", add_help=False,
                        help="drive the service like a crowd, then verify it (seats loadtest --help)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "loadtest":
        sys.exit(run_loadtest(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "api":
        run_api()
    elif args.command == "worker":
        from worker.supervisor import main as worker_main

        worker_main()
    elif args.command == "dev":
        from service.devrunner import DevError, run_dev

        try:
            sys.exit(run_dev(cluster=args.cluster))
        except DevError as exc:
            print(f"seats dev: {exc}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
