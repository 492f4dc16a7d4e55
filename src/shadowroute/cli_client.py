"""CLI commands that talk to a running shadowroute API: ``decision`` and ``labels send``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import orjson

from shadowroute.core.records import encode_label, parse_label_batch, parse_label_csv

EXIT_PROMOTE = 0
EXIT_ERROR = 1
EXIT_HOLD = 3
EXIT_REJECT = 4
VERDICT_EXIT = {"promote": EXIT_PROMOTE, "hold": EXIT_HOLD, "reject": EXIT_REJECT}
LABEL_CHUNK = 5000


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def cmd_decision(args: argparse.Namespace) -> int:
    """Print the decision JSON; the exit status tells the verdict."""
    url = f"{args.api.rstrip('/')}/v1/routes/{args.route}/candidates/{args.candidate}/decision"
    deadline = time.monotonic() + args.timeout
    params = {"revision": args.revision} if args.revision else None
    with httpx.Client(timeout=10.0, headers=_headers(args.token)) as client:
        while True:
            try:
                r = client.get(url, params=params)
            except httpx.HTTPError as exc:
                print(f"error: cannot reach {args.api}: {exc}", file=sys.stderr)
                return EXIT_ERROR
            if r.status_code != 200:
                print(f"error: {r.status_code} from {url}: {r.text[:500]}", file=sys.stderr)
                return EXIT_ERROR
            doc = r.json()
            verdict = doc.get("verdict")
            if verdict not in VERDICT_EXIT:
                print(f"error: unexpected verdict {verdict!r}", file=sys.stderr)
                return EXIT_ERROR
            if not args.wait or verdict != "hold" or time.monotonic() >= deadline:
                sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
                return VERDICT_EXIT[verdict]
            time.sleep(min(args.interval, max(deadline - time.monotonic(), 0.0)))


def cmd_labels_send(args: argparse.Namespace) -> int:
    """Validate a JSONL or CSV file of labels locally, then post the good ones in chunks."""
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    now_ms = int(time.time() * 1000)
    is_csv = args.format == "csv" or (args.format == "auto" and path.suffix.lower() == ".csv")
    if is_csv:
        good, bad = parse_label_csv(data.decode("utf-8-sig", errors="replace"), now_ms)
    else:
        good, bad = parse_label_batch(data, "application/x-ndjson", now_ms)
    for number, reason in bad[:50]:
        print(f"{path}:{number}: {reason}", file=sys.stderr)
    if len(bad) > 50:
        print(f"... and {len(bad) - 50} more bad lines", file=sys.stderr)
    sent = 0
    url = f"{args.api.rstrip('/')}/v1/labels"
    with httpx.Client(timeout=30.0, headers=_headers(args.token)) as client:
        for i in range(0, len(good), LABEL_CHUNK):
            body = b"\n".join(encode_label(lab) for lab in good[i : i + LABEL_CHUNK])
            try:
                r = client.post(url, content=body, headers={"Content-Type": "application/x-ndjson"})
            except httpx.HTTPError as exc:
                print(f"error: cannot reach {args.api}: {exc} ({sent} sent)", file=sys.stderr)
                return EXIT_ERROR
            if r.status_code != 202:
                print(f"error: {r.status_code}: {r.text[:500]} ({sent} sent)", file=sys.stderr)
                return EXIT_ERROR
            sent += int(r.json()["accepted"])
    print(f"{sent} label(s) accepted, {len(bad)} bad line(s) not sent")
    return EXIT_ERROR if bad else 0


def add_client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "decision",
        help="print a candidate's verdict as JSON (exit 0 promote, 3 hold, 4 reject, 1 error)",
    )
    d.add_argument("route")
    d.add_argument("candidate")
    d.add_argument("--api", default="http://127.0.0.1:9090", help="the shadowroute API's URL")
    d.add_argument("--token", default=None, help="bearer token, if the API needs one")
    d.add_argument(
        "--revision",
        default=None,
        help="the candidate revision deploy tooling expects (its revision, version, or the "
        "revision id): hold unless the evidence is about it",
    )
    d.add_argument("--wait", action="store_true", help="poll until the verdict is not hold")
    d.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    d.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    d.set_defaults(func=cmd_decision)

    lab = sub.add_parser("labels", help="ground truth tools")
    lsub = lab.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    s = lsub.add_parser("send", help="send label records from a JSONL or CSV file")
    s.add_argument("file")
    s.add_argument("--api", default="http://127.0.0.1:9090")
    s.add_argument("--token", default=None)
    s.add_argument("--format", choices=["auto", "jsonl", "csv"], default="auto")
    s.set_defaults(func=cmd_labels_send)
