"""The `semcache` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cache import SemcacheError

from .settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", help="TOML settings file (else $SEMCACHE_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir")
    serve.add_argument("--threshold", type=float)
    serve.add_argument("--default-ttl-s", type=float)
    serve.add_argument("--model-path")
    serve.add_argument("--price-table")
    serve.add_argument("--log-level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        settings = Settings.load(config_file=args.config, overrides=overrides)
    except SemcacheError as exc:
        print(f"semcache: {exc.detail}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command == "serve":
        import uvicorn

        from .app import create_app

        if settings.admin_token is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
            logging.getLogger("semcache").warning(
                "admin endpoints are open: set SEMCACHE_ADMIN_TOKEN before exposing %s",
                settings.host,
            )
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=10,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
