"""The `semcache` command."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec

from cache import PriceTable, SemcacheError
from cache.ledger import Ledger
from cache.quality.cli import add_arguments as add_eval_arguments
from cache.quality.cli import run_from_args as run_eval
from cache.report import findings, render

from .logs import configure_logging
from .memory import limit_arenas
from .settings import Settings
from .warm import add_arguments as add_warm_arguments
from .warm import run as run_warm

# Command-line arguments that are not settings.
_NOT_SETTINGS = frozenset(
    {"command", "config", "since", "until", "json", "file", "namespace", "url", "target_precision"}
    | {"out", "suites", "quick", "split", "memo_dir", "traps", "margins", "no_progress"}
    | {"key", "tier", "endpoint", "concurrency", "batch", "resume", "poll_interval_s"}
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", help="TOML settings file (else $SEMCACHE_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir")
    serve.add_argument("--threshold", type=float)
    serve.add_argument("--margin", type=float)
    serve.add_argument("--margin-weight", type=float)
    serve.add_argument("--default-ttl-s", type=float)
    serve.add_argument("--model-path")
    serve.add_argument("--price-table")
    serve.add_argument("--log-level")
    report = commands.add_parser("report", help="print where tokens and dollars go, and findings")
    report.add_argument("--config", help="TOML settings file (else $SEMCACHE_CONFIG)")
    report.add_argument("--data-dir")
    report.add_argument("--price-table")
    report.add_argument("--since", help="start of the window, ISO 8601 (UTC if no zone)")
    report.add_argument("--until", help="end of the window, ISO 8601 (UTC if no zone)")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    importer = commands.add_parser(
        "import", help='load {"questions": [...], "answer": ...} records into a running server'
    )
    importer.add_argument("file", type=Path, help="JSON list or JSONL of FAQ records")
    importer.add_argument("--namespace", default="default")
    importer.add_argument("--url", help="server base URL (default: from host and port settings)")
    importer.add_argument("--key", help="client key (x-semcache-key), if the server needs one")
    warm = commands.add_parser(
        "warm", help="answer a list of expected questions ahead of users, in a running server"
    )
    add_warm_arguments(warm)
    evaluate = commands.add_parser(
        "eval", help="measure answer quality on public data through the server's own rule"
    )
    add_eval_arguments(evaluate)
    calibrate = commands.add_parser(
        "calibrate", help="pick threshold and margin for a target precision from labelled data"
    )
    calibrate.add_argument(
        "file", type=Path, help="CSV: question1,question2,is_duplicate or text,category"
    )
    calibrate.add_argument("--target-precision", type=float, default=0.99)
    calibrate.add_argument("--model-path")
    calibrate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _calibrate(settings: Settings, file: Path, target: float, as_json: bool) -> int:
    from cache import CacheConfig
    from cache.calibrate import calibrate, render
    from embeddings import load_embedder

    if not 0 < target <= 1:
        print("semcache: --target-precision must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        result = calibrate(
            file,
            load_embedder(
                settings.model_path,
                backend=settings.embedder_backend,
                graph_dir=settings.graph_dir,
                threads=settings.embed_threads,
                spin=settings.embed_spin,
            ),
            target_precision=target,
            config=CacheConfig(
                guards=settings.guards,
                margin_weight=settings.margin_weight,
                piece_weight=settings.piece_weight,
                max_question_chars=10**6,
            ),
        )
    except (ValueError, OSError, KeyError) as exc:
        print(f"semcache: {exc}", file=sys.stderr)
        return 2
    print(msgspec.json.encode(result).decode() if as_json else render(result))
    return 0


def _import(
    settings: Settings, file: Path, namespace: str, url: str | None, key: str | None
) -> int:
    from .access import HEADER as KEY_HEADER
    from .importer import import_file

    base = url or f"http://{settings.host}:{settings.port}"
    headers = {KEY_HEADER: key} if key else {}
    answers = entries = 0
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            for created in import_file(file, client=client, namespace=namespace, headers=headers):
                answers += 1
                entries += 1 + len(created["alias_entry_ids"])
    except (ValueError, OSError) as exc:
        print(f"semcache: {exc} ({answers} answers imported before it)", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"semcache: cannot reach {base}: {exc}", file=sys.stderr)
        return 2
    print(f"imported {answers} answers as {entries} entries into namespace {namespace!r}")
    return 0


def _instant(text: str | None) -> float | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def report(settings: Settings, since: str | None, until: str | None, as_json: bool) -> int:
    """Read the ledger directly (the server need not run) and print the report."""
    path = Path(settings.data_dir) / "ledger.sqlite3"
    if not path.exists():
        print(f"semcache: no ledger at {path}: nothing has been recorded yet", file=sys.stderr)
        return 1
    try:
        start, end = _instant(since), _instant(until)
    except ValueError as exc:
        print(f"semcache: bad time: {exc}", file=sys.stderr)
        return 2
    ledger = Ledger(path)
    try:
        usage = ledger.report(since=start, until=end)
        found = findings(
            ledger,
            PriceTable.load(settings.price_table),
            since=start,
            until=end,
            cheap_model=settings.tiers[0].model,
        )
    finally:
        ledger.close()
    if as_json:
        print(msgspec.json.encode({"usage": usage, "findings": found}).decode())
    else:
        print(render(usage, found))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    if args.command == "eval":
        overrides = {}  # its data_dir and model_path are the evaluation's, not the server's
    try:
        settings = Settings.load(config_file=getattr(args, "config", None), overrides=overrides)
    except SemcacheError as exc:
        print(f"semcache: {exc.detail}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level,
        json_lines=args.command == "serve" and settings.log_format == "json",
    )
    if args.command == "eval":
        from cache import CacheConfig

        rule = CacheConfig(
            threshold=settings.threshold,
            margin=settings.margin,
            margin_weight=settings.margin_weight,
            piece_weight=settings.piece_weight,
            guards=settings.guards,
        )
        return run_eval(args, config=rule, model_path=settings.model_path)
    if args.command == "calibrate":
        return _calibrate(settings, args.file, args.target_precision, args.json)
    if args.command == "import":
        return _import(settings, args.file, args.namespace, args.url, args.key)
    if args.command == "warm":
        return run_warm(settings, args)
    if args.command == "report":
        try:
            return report(settings, args.since, args.until, args.json)
        except SemcacheError as exc:
            print(f"semcache: {exc.detail}", file=sys.stderr)
            return 2
    if args.command == "serve":
        import uvicorn

        from .app import create_app

        try:
            app = create_app(settings)
        except SemcacheError as exc:
            print(f"semcache: {exc.detail}", file=sys.stderr)
            return 2
        if settings.admin_token is None and not is_loopback(settings.host):
            # Anyone who can reach the port could bump versions and delete entries.
            print(
                f"semcache: refusing to listen on {settings.host} without an admin token: "
                "set SEMCACHE_ADMIN_TOKEN (the /admin endpoints would be open to anyone who "
                "can reach the port), or listen on 127.0.0.1",
                file=sys.stderr,
            )
            return 2
        limit_arenas()  # before uvicorn and the model start their threads
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            # Our own request line (server/observe.py) replaces uvicorn's access log, and
            # uvicorn's loggers go to the handler configure_logging set up.
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
        )
    return 0


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


if __name__ == "__main__":
    raise SystemExit(main())
