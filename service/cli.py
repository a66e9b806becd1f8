"""The ``seats`` command: ``api``, ``worker``, ``dev``, ``loadtest``."""

from __future__ import annotations

import argparse
import sys

from service.logs import configure_logging


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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``seats`` console script."""
    parser = argparse.ArgumentParser(prog="seats", description="Seat-reservation service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("api", help="serve the HTTP API (production, containers)")
    commands.add_parser("worker", help="run the arq worker under a supervisor (production, containers)")
    commands.add_parser("dev", help="run Redis (private if SEATS_REDIS_URL is unset), API and worker")
    from loadtest.cli import add_arguments as add_loadtest_arguments  # argparse only: cheap to import

    add_loadtest_arguments(commands.add_parser("loadtest", help="drive the service like a crowd, then verify it"))
    args = parser.parse_args(argv)
    if args.command == "api":
        run_api()
    elif args.command == "worker":
        from worker.supervisor import main as worker_main

        worker_main()
    elif args.command == "loadtest":
        from loadtest.cli import run_from_args

        sys.exit(run_from_args(args))
    elif args.command == "dev":
        from service.devrunner import DevError, run_dev

        try:
            sys.exit(run_dev())
        except DevError as exc:
            print(f"seats dev: {exc}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
