"""Demo pieces for deploy/compose.yaml, standard library only.

``model``: a KServe v1 classifier (``POST /v1/models/<name>:predict`` with ``{"instances":
[[x0, x1], ...]}`` → ``{"predictions": [0 | 1, ...]}``) whose decision boundary is tilted by
``--skew``, so two instances of it differ in accuracy.

``traffic``: sends requests through the router with an ``x-request-id`` and, after a delay,
posts the true labels to the comparator's ``POST /v1/labels``. Stops after ``--duration`` s.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def truth(x: list[float]) -> int:
    return 1 if x[0] + x[1] > 0 else 0


def serve_model(port: int, skew: float) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
            preds = [1 if x[0] + (1 - skew) * x[1] > 0 else 0 for x in body["instances"]]
            out = json.dumps({"predictions": preds}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def post(url: str, payload: bytes, headers: dict[str, str]) -> None:
    req = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


def traffic(target: str, labels_url: str, rate: float, duration: float, delay: float) -> None:
    rng = random.Random(7)
    pending: list[tuple[float, dict[str, object]]] = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        x = [rng.gauss(0, 1), rng.gauss(0, 1)]
        rid = uuid.uuid4().hex
        body = json.dumps({"instances": [x]}).encode()
        try:
            post(target, body, {"content-type": "application/json", "x-request-id": rid})
        except OSError as exc:
            print(f"request failed: {exc}", flush=True)
        pending.append((time.monotonic() + delay, {"v": 1, "id": rid, "label": truth(x)}))
        due = [rec for at, rec in pending if at <= time.monotonic()]
        if due:
            pending = [(at, rec) for at, rec in pending if at > time.monotonic()]
            try:
                post(labels_url, json.dumps(due).encode(), {"content-type": "application/json"})
            except OSError as exc:
                print(f"labels failed: {exc}", flush=True)
        time.sleep(1.0 / rate)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--port", type=int, default=8000)
    m.add_argument("--skew", type=float, default=0.0)
    t = sub.add_parser("traffic")
    t.add_argument("--target", required=True)
    t.add_argument("--labels", required=True)
    t.add_argument("--rate", type=float, default=20.0)
    t.add_argument("--duration", type=float, default=3600.0)
    t.add_argument("--label-delay", type=float, default=30.0)
    a = p.parse_args()
    if a.cmd == "model":
        serve_model(a.port, a.skew)
    else:
        traffic(a.target, a.labels, a.rate, a.duration, a.label_delay)


if __name__ == "__main__":
    main()
