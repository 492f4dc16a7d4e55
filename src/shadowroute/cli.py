"""The ``shadowroute`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from shadowroute import __version__
from shadowroute.configfile import load_config
from shadowroute.core.config import Config, ConfigError
from shadowroute.logfilter import RateLimitFilter

if TYPE_CHECKING:
    from shadowroute.preflight import Report

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimitFilter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    if level != "debug":
        # The HTTP client logs a line per request at INFO: the CLI's own output says enough.
        for chatty in ("httpx", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def os_error_text(exc: OSError) -> str:
    """An OSError in words, with the file it is about: ``No such file or directory: x.csv``."""
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


def _load(path: str) -> Config | None:
    """The config, or None after printing what is wrong with it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _with_state_mode(cfg: Config, mode: str | None) -> Config:
    """The config with ``--state-mode`` as its ``comparator.on_state_mismatch``."""
    if mode is None:
        return cfg
    comparator = cfg.comparator.model_copy(update={"on_state_mismatch": mode})
    return cfg.model_copy(update={"comparator": comparator})


def _state_ok(cfg: Config) -> bool:
    """Check the comparator's state file before anything starts; False after printing why it
    belongs to another config."""
    from shadowroute.comparator.statefile import StateMismatch, check_state_file

    try:
        check_state_file(cfg)
    except StateMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    except (OSError, sqlite3.Error) as exc:
        what = os_error_text(exc) if isinstance(exc, OSError) else str(exc)
        print(f"error: comparator.state_path {cfg.comparator.state_path}: {what}", file=sys.stderr)
        return False
    return True


def _print_problems(report: Report, *, environment_is_error: bool) -> None:
    """A report's problems on stderr: the config's as one block, those of this machine (a
    port in use) as errors or warnings."""
    errors = report.config_errors
    if errors:
        n = len(errors)
        print(
            f"invalid configuration ({n} problem{'s' if n > 1 else ''}):\n"
            + "\n".join(f"  {p}" for p in errors),
            file=sys.stderr,
        )
    word = "error" if environment_is_error else "warning"
    for p in report.environment:
        print(f"{word}: {p}", file=sys.stderr)


def cmd_config_check(args: argparse.Namespace) -> int:
    from shadowroute.preflight import check_file

    report = check_file(args.file)
    _print_problems(report, environment_is_error=False)
    cfg = report.config
    if cfg is None:
        return EXIT_ERROR
    n_cand = sum(len(r.candidates) for r in cfg.routes)
    print(
        f"{args.file}: OK ({len(cfg.routes)} route(s), {n_cand} candidate(s), "
        f"transport {cfg.transport.kind})"
        + (f", {len(report.environment)} warning(s)" if report.environment else "")
    )
    return EXIT_OK


def cmd_config_reference(args: argparse.Namespace) -> int:
    from shadowroute.core.config_doc import reference

    sys.stdout.write(reference())
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    if args.workers < 0:
        print("error: --workers must be 0 (one process) or more", file=sys.stderr)
        return EXIT_USAGE
    from shadowroute.preflight import check_file

    # Everything that can be known before binding, reported at once (`config check` runs the
    # same); a port in use here is an error.
    report = check_file(args.config)
    _print_problems(report, environment_is_error=True)
    if report.config is None or report.environment:
        return EXIT_ERROR
    cfg = _with_state_mode(report.config, args.state_mode)
    if cfg.listen.port == 0 and args.workers > 1:
        print("error: --workers needs a fixed listen.port (not 0)", file=sys.stderr)
        return EXIT_USAGE
    from shadowroute import runtime
    from shadowroute.runtime.workers import serve_workers
    from shadowroute.stream.kafka import CopartitionError

    if cfg.transport.kind == "embedded" and not _state_ok(cfg):
        return EXIT_ERROR
    from shadowroute.runtime.reload import file_loader

    reload_from = file_loader(args.config, lambda c: _with_state_mode(c, args.state_mode))
    try:
        if args.workers >= 1:
            return serve_workers(cfg, args.workers, reload_from)
        _run(runtime.serve(cfg, reload_from))
        return EXIT_OK
    except (CopartitionError, runtime.StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        # The environment changed since the checks (a port taken meanwhile, a file gone):
        # one line, no traceback.
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except sqlite3.Error as exc:
        print(f"error: comparator.state_path {cfg.comparator.state_path}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_ERROR
    if cfg.transport.kind != "kafka":
        print(
            "error: `compare` consumes from Kafka; with transport.kind 'embedded' the "
            "comparator runs inside `serve`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from shadowroute.runtime import run_compare
    from shadowroute.runtime.reload import file_loader

    cfg = _with_state_mode(cfg, args.state_mode)
    if not _state_ok(cfg):
        return EXIT_ERROR
    _run(
        run_compare(
            cfg,
            group_instance_id=args.instance_id,
            session_timeout_ms=args.session_timeout_ms,
            reload_from=file_loader(args.config, lambda c: _with_state_mode(c, args.state_mode)),
        )
    )
    return EXIT_OK


def _kafka_config(path: str) -> Config | None:
    """The config at ``path`` if it loads and its transport is Kafka (else says why)."""
    cfg = _load(path)
    if cfg is not None and cfg.transport.kind != "kafka":
        print("error: transport.kind is not 'kafka': there are no topics", file=sys.stderr)
        return None
    return cfg


def cmd_topics_create(args: argparse.Namespace) -> int:
    cfg = _kafka_config(args.config)
    if cfg is None:
        return EXIT_ERROR
    from shadowroute.stream.kafka import create_topics

    try:
        created = asyncio.run(create_topics(cfg.transport))
    except Exception as exc:
        print(f"error: could not create topics: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return EXIT_OK


def cmd_topics_describe(args: argparse.Namespace) -> int:
    cfg = _kafka_config(args.config)
    if cfg is None:
        return EXIT_ERROR
    from shadowroute.stream.kafka import describe_text, describe_topics

    try:
        doc = asyncio.run(describe_topics(cfg.transport))
    except Exception as exc:
        print(f"error: could not describe topics: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        import orjson

        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(describe_text(doc))
    return EXIT_OK


class _Version(argparse.Action):
    """``--version``: the version and whether the hot path is compiled (imported only then)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from shadowroute import build_info

        print(f"shadowroute {__version__} ({build_info.describe()})")
        parser.exit()


def _state_mode_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-mode",
        choices=["refuse", "keep", "reset"],
        default=None,
        help="when the state file holds other routes or models than the config: refuse to "
        "start (the default, from comparator.on_state_mismatch), keep the file, or reset it "
        "(moved aside to <state_path>.<time>.bak)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shadowroute",
        description="Shadow-deploy ML models: mirror traffic to candidates and get verdicts.",
    )
    p.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log lines as text or as JSON objects (request bodies and headers are never logged)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from shadowroute.demo.cli import add_demo_parser

    add_demo_parser(sub)

    s = sub.add_parser("serve", help="run the proxy (and, embedded, the comparator and API)")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="data-plane processes sharing the listen port; the comparator and API run in a "
        "supervisor process beside them, off the proxy's core (0: everything in one process)",
    )
    _state_mode_arg(s)
    s.set_defaults(func=cmd_serve)

    cmp_ = sub.add_parser(
        "compare", help="run a comparator (Kafka consumer group member) and the API"
    )
    cmp_.add_argument("-c", "--config", required=True, help="YAML config file (transport kafka)")
    cmp_.add_argument(
        "--instance-id",
        default=None,
        help="static consumer group membership: a member restarted under the same id gets its "
        "partitions back at once instead of after its session times out (e.g. the pod name)",
    )
    cmp_.add_argument(
        "--session-timeout-ms",
        type=int,
        default=10_000,
        help="how long the group waits for a silent member before reassigning its partitions",
    )
    _state_mode_arg(cmp_)
    cmp_.set_defaults(func=cmd_compare)

    t = sub.add_parser("topics", help="Kafka topic tools")
    tsub = t.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", help="create the topics: pairs labels scores deadletter events")
    tc.add_argument("-c", "--config", required=True)
    tc.set_defaults(func=cmd_topics_create)
    td = tsub.add_parser(
        "describe", help="partitions, leaders, in-sync replicas and settings of the topics"
    )
    td.add_argument("-c", "--config", required=True)
    td.add_argument("--json", action="store_true", help="print JSON instead of text")
    td.set_defaults(func=cmd_topics_describe)

    from shadowroute.cli_client import add_client_parsers

    add_client_parsers(sub)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = csub.add_parser("check", help="validate a config file")
    chk.add_argument("file")
    chk.set_defaults(func=cmd_config_check)
    ref = csub.add_parser("reference", help="print the config reference (Markdown)")
    ref.set_defaults(func=cmd_config_reference)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
