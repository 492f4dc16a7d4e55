"""Request planning as a pure function, in tables: the raw bytes of a request head in (read by
llhttp, as the data plane reads them), the exact head production is sent and the sampling
decisions out, or the refusal the client gets. No socket and no event loop; the same cases
run through the whole data plane in test_playbook_framing.py and over sockets in
tests/reliability/."""

from __future__ import annotations

from typing import Any

import pytest

from playbook import head_of
from shadowroute.core.config import Config, parse_config
from shadowroute.core.sampling import sample_point
from shadowroute.dataplane.planner import Head, Plan, Planner, Refusal, route_plans

PEER = b"10.1.2.3"


def config(*routes: dict[str, Any], **top: Any) -> Config:
    return parse_config({"routes": list(routes), "listen": {"port": 0}, **top}, environ={})


def route(name: str = "fraud", prefix: str = "/", **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "name": name,
        "path_prefix": prefix,
        "protocol": "kserve-v1",
        "task": "regression",
        "production": {"name": "prod", "url": "http://prod.internal:8000/base/"},
        "candidates": [],
    }
    r.update(extra)
    return r


def planner(cfg: Config) -> Planner:
    ids = iter(b"gen-%d" % i for i in range(1, 1000))
    return Planner(cfg, route_plans(cfg), lambda: next(ids))


def plan_of(p: Planner, raw: bytes, *, control_ok: bool = False, mirroring: bool = True) -> Plan:
    plan = p.plan(head_of(raw), PEER, control_ok, mirroring)
    assert isinstance(plan, Plan), plan
    return plan


def refusal_of(p: Planner, raw: bytes) -> Refusal:
    plan = p.plan(head_of(raw), PEER, False, True)
    assert isinstance(plan, Refusal), plan.upstream_head
    return plan


ONE_CONFIG = config(route(candidates=[{"name": "cand", "url": "http://cand:9000"}]))

# --- raw head in: the exact head production is sent ------------------------------------------

TAIL = b"host: prod.internal:8000\r\n\r\n"
FORWARDED = {
    "content_length": (
        b"POST /p?q=1 HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\n\r\n",
        b"POST /base/p?q=1 HTTP/1.1\r\nContent-Type: application/json\r\n"
        b"x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: api\r\n"
        b"x-request-id: gen-1\r\ncontent-length: 3\r\n" + TAIL,
    ),
    "chunked_rebuilt": (
        b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x-sum\r\n\r\n",
        b"POST /base/p HTTP/1.1\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n"
        b"x-request-id: gen-1\r\ntransfer-encoding: chunked\r\n" + TAIL,
    ),
    "length_normalised": (
        b"POST /p HTTP/1.1\r\nContent-Length:  007 \r\n\r\n",
        b"POST /base/p HTTP/1.1\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n"
        b"x-request-id: gen-1\r\ncontent-length: 7\r\n" + TAIL,
    ),
    "hop_by_hop_and_named_out": (
        b"GET /p HTTP/1.1\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
        b"X-Hop: 1\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic x\r\n"
        b"Accept: */*\r\n\r\n",
        b"GET /base/p HTTP/1.1\r\nAccept: */*\r\nx-forwarded-for: 10.1.2.3\r\n"
        b"x-forwarded-proto: http\r\nx-request-id: gen-1\r\n" + TAIL,
    ),
    "connection_cannot_name_framing_away": (
        b"POST /p HTTP/1.1\r\nConnection: content-length, x-request-id\r\n"
        b"x-request-id: client-1\r\nContent-Length: 2\r\n\r\n",
        b"POST /base/p HTTP/1.1\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n"
        b"x-request-id: client-1\r\ncontent-length: 2\r\n" + TAIL,
    ),
    "forwarding_headers_rebuilt": (
        b"GET /p HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: forged\r\nHost: api\r\n\r\n",
        b"GET /base/p HTTP/1.1\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\n"
        b"x-forwarded-proto: http\r\nx-forwarded-host: api\r\nx-request-id: gen-1\r\n" + TAIL,
    ),
    "router_marker_dropped_credentials_kept": (
        b"POST /p HTTP/1.1\r\nX-Shadow-Request: 1\r\nAuthorization: Bearer t\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"POST /base/p HTTP/1.1\r\nAuthorization: Bearer t\r\nx-forwarded-for: 10.1.2.3\r\n"
        b"x-forwarded-proto: http\r\nx-request-id: gen-1\r\ncontent-length: 0\r\n" + TAIL,
    ),
    "options_asterisk": (
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"OPTIONS /base/ HTTP/1.1\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n"
        b"x-request-id: gen-1\r\n" + TAIL,
    ),
    "http10_sent_as_http11": (
        b"GET /p HTTP/1.0\r\n\r\n",
        b"GET /base/p HTTP/1.1\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n"
        b"x-request-id: gen-1\r\n" + TAIL,
    ),
}


@pytest.mark.parametrize("case", list(FORWARDED))
def test_the_head_production_is_sent(case: str) -> None:
    raw, expected = FORWARDED[case]
    assert plan_of(planner(ONE_CONFIG), raw).upstream_head == expected


def test_the_client_framing_decides_how_the_body_is_relayed() -> None:
    p = planner(ONE_CONFIG)
    chunked = plan_of(p, b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (chunked.chunked, chunked.length) == (True, None)
    sized = plan_of(p, b"POST /p HTTP/1.1\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n")
    assert (sized.chunked, sized.length, sized.expect_continue) == (False, 12, True)
    closing = plan_of(p, b"GET /p HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert not closing.keep_alive
    old = plan_of(p, b"GET /p HTTP/1.0\r\n\r\n")
    assert old.http10 and not old.keep_alive


# --- raw head in: the refusal out ------------------------------------------------------------

REFUSED = {
    "absolute_form": (b"GET http://evil.example/p HTTP/1.1\r\n\r\n", 400, "origin-form"),
    "connect": (b"CONNECT evil.example:443 HTTP/1.1\r\n\r\n", 405, "CONNECT"),
    "upgrade_refused": (
        b"GET /p HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        501,
        "upgrades",
    ),
    "length_2_63": (b"POST /p HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", 400, ""),
    "length_2_64_minus_1": (
        b"POST /p HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
        400,
        "content-length",
    ),
    "request_id_with_newline_escape": (
        b"GET /p HTTP/1.1\r\nx-request-id: a b\r\n\r\n",
        400,
        "x-request-id",
    ),
    "request_id_too_long": (
        b"GET /p HTTP/1.1\r\nx-request-id: " + b"a" * 200 + b"\r\n\r\n",
        400,
        "x-request-id",
    ),
    "too_many_headers": (
        b"GET /p HTTP/1.1\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(101)) + b"\r\n",
        431,
        "too many",
    ),
    "head_too_large": (
        b"GET /p HTTP/1.1\r\nx-big: " + b"b" * 70_000 + b"\r\n\r\n",
        431,
        "too large",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals(case: str) -> None:
    raw, status, words = REFUSED[case]
    refusal = refusal_of(planner(ONE_CONFIG), raw)
    assert refusal.status == status
    assert words in refusal.message


def test_a_length_the_parser_let_through_is_still_refused() -> None:
    """The planner does not rely on llhttp for what it forwards: a head built by hand with a
    length that is not plain digits is refused too."""
    p = planner(ONE_CONFIG)
    for value in (b"0x10", b"1_0", b"+3", b"-1", b"3 4", b""):
        got = p.plan(Head(b"POST", b"/p", [(b"Content-Length", value)]), PEER, False, True)
        assert isinstance(got, Refusal) and got.status == 400, value


def test_limits_come_from_the_config() -> None:
    p = planner(config(route(), proxy={"max_headers": 8, "max_header_bytes": 1024}))
    eight = b"".join(b"h%d: 1\r\n" % i for i in range(8))
    assert plan_of(p, b"GET /p HTTP/1.1\r\n" + eight + b"\r\n")
    assert refusal_of(p, b"GET /p HTTP/1.1\r\n" + eight + b"h9: 1\r\n\r\n").status == 431
    fits = b"GET /p HTTP/1.1\r\na: " + b"x" * (1024 - 5) + b"\r\n\r\n"  # 1 + 1019 + 4 bytes
    assert plan_of(p, fits)
    assert refusal_of(p, fits.replace(b"a: ", b"a: x")).status == 431


# --- routes --------------------------------------------------------------------------------

ROUTES = config(
    route("any", "/"),
    route("scores", "/v1/score"),
    route("scores-eu", "/v1/score", host="eu.api"),
    route("deep", "/v1/score/deep"),
)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"GET /other HTTP/1.1\r\nHost: eu.api\r\n\r\n", "any"),
        (b"GET /v1/score HTTP/1.1\r\nHost: us.api\r\n\r\n", "scores"),
        (b"GET /v1/score/x HTTP/1.1\r\nHost: EU.api:8080\r\n\r\n", "scores-eu"),
        (b"GET /v1/score/deep?x=/v1 HTTP/1.1\r\nHost: eu.api\r\n\r\n", "deep"),
        (b"GET /v1/scores HTTP/1.1\r\n\r\n", "scores"),  # a prefix, as documented
    ],
)
def test_the_most_specific_route_matches(raw: bytes, name: str) -> None:
    assert plan_of(planner(ROUTES), raw).route.name == name


def test_no_route_is_a_404() -> None:
    p = planner(config(route("scores", "/v1/score", host="api")))
    assert refusal_of(p, b"GET /v1/score HTTP/1.1\r\nHost: other\r\n\r\n").status == 404
    assert refusal_of(p, b"GET /v1/score HTTP/1.1\r\n\r\n").status == 404
    assert refusal_of(p, b"GET /v2 HTTP/1.1\r\nHost: api\r\n\r\n").status == 404


# --- sampling and the mirror head ----------------------------------------------------------


def sampled(fraction_a: float, fraction_b: float, **extra: Any) -> Planner:
    cands = [
        {"name": "a", "url": "http://a:9000", "fraction": fraction_a},
        {"name": "b", "url": "http://b:9000", "fraction": fraction_b},
    ]
    top = extra.pop("top", {})
    return planner(config(route(candidates=cands, **extra), **top))


def post(rid: bytes, *extra: bytes) -> bytes:
    return (
        b"POST /p HTTP/1.1\r\nx-request-id: " + rid + b"\r\n" + b"".join(extra)
        + b"Content-Length: 2\r\n\r\n"
    )  # fmt: skip


# Request ids whose sampling points fall in known places: below 0.3, between 0.3 and 0.7,
# above 0.7.
_IDS = [b"req-%d" % i for i in range(200)]
LOW = next(i for i in _IDS if sample_point(i) < 0.3)
MID = next(i for i in _IDS if 0.3 <= sample_point(i) < 0.7)
HIGH = next(i for i in _IDS if sample_point(i) >= 0.7)

SKIP = b"x-shadow-mirror: skip\r\n"
FORCE = b"x-shadow-mirror: force\r\n"
TRUSTED: dict[str, Any] = {"control_ok": True}
OFF: dict[str, Any] = {"mirroring": False}
SAMPLING: dict[str, tuple[tuple[float, float], bytes, bytes, dict[str, Any], list[str], str]] = {
    # case: (fractions, request id, extra header line, planner args, chosen, skipped)
    "all_chosen": ((1.0, 1.0), MID, b"", {}, ["a", "b"], ""),
    "one_chosen": ((0.7, 0.3), MID, b"", {}, ["a"], "sampled_out"),
    "none_chosen": ((0.3, 0.3), HIGH, b"", {}, [], "sampled_out"),
    "nested_fractions": ((0.3, 0.7), LOW, b"", {}, ["a", "b"], ""),
    "mirroring_off": ((1.0, 1.0), MID, b"", OFF, [], "disabled"),
    "skip_from_trusted": ((1.0, 1.0), MID, SKIP, TRUSTED, [], ""),
    "force_from_trusted": ((0.0, 0.0), MID, FORCE, TRUSTED, ["a", "b"], ""),
    "force_untrusted_ignored": ((0.0, 0.0), MID, FORCE, {}, [], "sampled_out"),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_which_candidates_get_a_mirror(case: str) -> None:
    (fa, fb), rid, extra, kwargs, chosen, skipped = SAMPLING[case]
    p = sampled(fa, fb)
    plan = plan_of(p, post(rid, extra), **kwargs)
    assert [c.name for c in plan.mirror_to] == chosen
    assert plan.skipped == skipped
    assert plan.capture == bool(chosen)  # the body is kept only for a mirror
    assert plan.control_ignored == (case == "force_untrusted_ignored")
    # The router's control header never reaches production or a candidate.
    assert b"x-shadow-mirror" not in plan.upstream_head + plan.mirror_common


def test_the_control_header_counts_with_the_admin_token() -> None:
    p = sampled(0.0, 0.0, top={"admin": {"token": "S3cret"}})
    forced = plan_of(p, post(MID, b"x-shadow-mirror: force; token=S3cret\r\n"))
    assert [c.name for c in forced.mirror_to] == ["a", "b"] and not forced.control_ignored
    wrong = plan_of(p, post(MID, b"x-shadow-mirror: force; token=guess\r\n"))
    assert wrong.mirror_to == [] and wrong.control_ignored


def test_methods_not_recorded_and_upgrades_are_not_mirrored() -> None:
    p = sampled(1.0, 1.0)
    got = plan_of(p, b"GET /p HTTP/1.1\r\n\r\n")
    assert got.mirror_to == [] and got.skipped == "method_skipped" and not got.monitored
    tunnels = planner(
        config(
            route(candidates=[{"name": "a", "url": "http://a:9000"}], mirror_methods=["GET"]),
            proxy={"upgrade": "pass"},
        )
    )
    up = plan_of(tunnels, b"GET /p HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert up.upgrade and not up.keep_alive and up.mirror_to == []
    assert up.skipped == "method_skipped"
    assert b"\r\nUpgrade: websocket\r\nconnection: upgrade\r\n" in up.upstream_head


def test_a_body_over_the_capture_limit_is_not_kept() -> None:
    p = sampled(1.0, 1.0, top={"mirror": {"capture_limit_bytes": 1024}})
    raw = b"POST /p HTTP/1.1\r\nx-request-id: " + MID + b"\r\nContent-Length: 1025\r\n\r\n"
    plan = plan_of(p, raw)
    assert [c.name for c in plan.mirror_to] == ["a", "b"]
    assert plan.too_large and not plan.capture
    fits = plan_of(p, raw.replace(b"1025", b"1024"))
    assert not fits.too_large and fits.capture
    # A chunked body's size is not known from its head: kept, and cut as it streams.
    streamed = plan_of(p, raw.replace(b"Content-Length: 1025", b"Transfer-Encoding: chunked"))
    assert not streamed.too_large and streamed.capture


def test_monitoring_and_input_capture() -> None:
    p = planner(config(route(monitor_fraction=0.5, capture={"input": True})))
    low = plan_of(p, post(LOW))  # sample point < 0.5
    high = plan_of(p, post(HIGH))
    assert low.monitored and low.capture
    assert not high.monitored and not high.capture
    assert low.mirror_to == [] and low.skipped == ""


def test_credentials_go_to_candidates_only_if_they_forward_them() -> None:
    cands = [
        {"name": "a", "url": "http://a:9000"},
        {"name": "b", "url": "http://b:9000", "forward_private_headers": True},
    ]
    p = planner(config(route(candidates=cands)))
    plan = plan_of(p, post(MID, b"Authorization: Bearer secret\r\n", b"Cookie: s=1\r\n"))
    assert b"Authorization: Bearer secret\r\n" in plan.upstream_head
    assert b"secret" not in plan.mirror_common and b"Cookie" not in plan.mirror_common
    assert plan.mirror_private == b"Authorization: Bearer secret\r\nCookie: s=1\r\n"
    assert b"x-request-id: " + MID + b"\r\n" in plan.mirror_common


# --- a pure function -------------------------------------------------------------------------


def test_the_same_head_gives_the_same_plan() -> None:
    """No hidden state: planning a head twice gives the same bytes and the same choices, and
    the request id the client sent decides the sample, not the order requests come in."""
    p = sampled(0.5, 0.5)
    raws = [post(i, b"Accept: */*\r\n") for i in _IDS[:50]]
    first = [plan_of(p, raw) for raw in raws]
    again = [plan_of(p, raw) for raw in reversed(raws)][::-1]
    for a, b in zip(first, again, strict=True):
        assert a.upstream_head == b.upstream_head and a.mirror_common == b.mirror_common
        assert [c.name for c in a.mirror_to] == [c.name for c in b.mirror_to]
        assert (a.monitored, a.capture, a.skipped) == (b.monitored, b.capture, b.skipped)
    assert 0 < sum(bool(a.mirror_to) for a in first) < 50


def test_generated_ids_come_from_the_generator_handed_in() -> None:
    p = planner(ONE_CONFIG)
    ids = [plan_of(p, b"GET /p HTTP/1.1\r\n\r\n").request_id for _ in range(3)]
    assert ids == [b"gen-1", b"gen-2", b"gen-3"]
    assert plan_of(p, b"GET /p HTTP/1.1\r\nX-Request-ID: mine-1\r\n\r\n").request_id == b"mine-1"
