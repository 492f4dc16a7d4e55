"""``shadowroute demo``: the subcommand's options and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from shadowroute.demo.scenarios import SCENARIOS

if TYPE_CHECKING:
    from shadowroute.demo.run import DemoResult


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, got {text}")
    return value


def add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``demo`` to the ``shadowroute`` subcommands; ``args.func(args)`` returns the exit
    code (0 when the verdict matches the scenario, 1 otherwise)."""
    p = sub.add_parser(
        "demo",
        help="run everything in one process with demo models, traffic and delayed labels",
        description=(
            "Start two Open Inference Protocol model servers (trained now on scikit-learn's "
            "breast-cancer data), the proxy, the embedded comparator and the API with the "
            "scorecard; send traffic and delayed ground truth; print the verdict (--scenario "
            "llm: OpenAI-compatible stand-in chat models, a judge and an embeddings server "
            "instead). Exits 0 when the verdict matches the scenario, 1 otherwise."
        ),
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="better",
        help="better: promote; worse: reject; same: A/A, never promote; "
        "drift: production's inputs shift half-way; llm: a language-model route, a faster, "
        "cheaper candidate worse by a blinded judge, and a topic shift (default: better)",
    )
    p.add_argument(
        "--duration", type=_positive, default=60.0, help="seconds of traffic (default: 60)"
    )
    p.add_argument("--rate", type=_positive, default=40.0, help="requests per second (default: 40)")
    p.add_argument(
        "--port",
        type=_port,
        default=9090,
        help="admin/API/scorecard port; the proxy takes the next one or a free one; "
        "0 for free ports (default: 9090)",
    )
    p.add_argument("--seed", type=int, default=0, help="data split and model seed (default: 0)")
    p.add_argument(
        "--keep-open",
        action="store_true",
        help="keep serving the scorecard after the verdict, until Ctrl-C",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="print plain lines instead of redrawing (the default when not on a terminal)",
    )
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from shadowroute.demo.models import MissingExtra
    from shadowroute.demo.run import DemoOptions, run_demo

    opts = DemoOptions(
        scenario=args.scenario,
        duration_s=args.duration,
        rate=args.rate,
        port=args.port,
        seed=args.seed,
        interactive=False if args.plain else None,
        keep_open=args.keep_open,
    )
    try:
        result = _run(run_demo(opts))
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result.exit_code


def _run(coro: Coroutine[Any, Any, DemoResult]) -> DemoResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)
