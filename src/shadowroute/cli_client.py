"""CLI commands that talk to a running shadowroute API: ``decision``, ``labels send`` and
``labels waiting``."""

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
    matched: int | None = 0
    waiting: int | None = 0
    examples: list[str] = []
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
            doc = r.json()
            sent += int(doc["accepted"])
            if doc.get("matched") is None or doc.get("waiting") is None:
                matched = waiting = None  # Kafka: the comparator matches them later
            elif matched is not None and waiting is not None:
                matched += int(doc["matched"])
                waiting += int(doc["waiting"])
                examples += [str(i) for i in doc.get("waiting_ids", [])][: 5 - len(examples)]
    print(f"{sent} label(s) accepted, {len(bad)} bad line(s) not sent")
    _print_matching(matched, waiting, examples)
    return EXIT_ERROR if bad else 0


NONE_MATCHED = (
    "hint: none of these ids matched a request seen so far; use the x-request-id the proxy "
    "returned with each answer (or the one you sent on the request) as the label's id, not "
    "your own row ids. Labels that match nothing wait until the route's label_ttl_s ends."
)


def _print_matching(matched: int | None, waiting: int | None, examples: list[str]) -> None:
    """What became of the accepted labels: matched a request now, or waiting for its pair;
    the hint when none matched."""
    if matched is None or waiting is None:
        print(
            "labels written to the labels topic; the comparator matches them later: see "
            "labels.waiting in GET /v1/routes/<route>/production on its API, or the "
            "shadowroute_labels_waiting metric"
        )
        return
    print(f"{matched} matched a request seen so far, {waiting} waiting for their pair")
    if waiting and not matched:
        print(NONE_MATCHED, file=sys.stderr)
        if examples:
            print(f"hint: waiting ids, e.g. {', '.join(examples)}", file=sys.stderr)


def cmd_labels_waiting(args: argparse.Namespace) -> int:
    """Print, per route, the labels kept waiting for their pair."""
    base = args.api.rstrip("/")
    with httpx.Client(timeout=10.0, headers=_headers(args.token)) as client:
        try:
            r = client.get(f"{base}/v1/routes")
            if r.status_code != 200:
                print(f"error: {r.status_code} from {base}/v1/routes", file=sys.stderr)
                return EXIT_ERROR
            unrouted = None
            for route in r.json()["routes"]:
                name = route["name"]
                p = client.get(f"{base}/v1/routes/{name}/production")
                if p.status_code != 200:
                    print(f"error: {p.status_code} from {p.url}", file=sys.stderr)
                    return EXIT_ERROR
                labels = p.json().get("labels") or {}
                cap = labels.get("max_waiting_per_route")
                print(f"{name}: {labels.get('waiting', 0)} label(s) waiting (at most {cap})")
                unrouted = labels.get("waiting_without_route", unrouted)
        except httpx.HTTPError as exc:
            print(f"error: cannot reach {args.api}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    if unrouted is not None:
        print(f"(no route): {unrouted} label(s) waiting")
    return 0


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
    w = lsub.add_parser("waiting", help="labels waiting for their pair, per route")
    w.add_argument("--api", default="http://127.0.0.1:9090")
    w.add_argument("--token", default=None)
    w.set_defaults(func=cmd_labels_waiting)
