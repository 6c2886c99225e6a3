"""The route filters as pure functions (header modifiers, path replacement with Gateway
API's slash rules, redirect Locations, rewrites, CORS) and the request value's lookups."""

from __future__ import annotations

import pytest

from mesh.model_l7 import (
    BackendRef,
    Cors,
    Filter,
    HeaderModifier,
    Mirror,
    PathModifier,
    Redirect,
    UrlRewrite,
)
from waypoint import cors
from waypoint.filters import (
    FilterSet,
    mirrored,
    modify_headers,
    redirect_location,
    replace_prefix,
    rewrite_request,
)
from waypoint.http_request import HttpRequest, split_authority


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "result"),
    [  # HTTPPathModifier's table in the Gateway API spec
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/anything", "/", "/xyz", "/xyz/anything"),
    ],
)
def test_replace_prefix_follows_the_spec_table(
    path: str, prefix: str, replacement: str, result: str
) -> None:
    assert replace_prefix(path, prefix, replacement) == result


def test_header_modifiers_are_case_insensitive_and_keep_other_headers() -> None:
    headers = (("x-keep", "1"), ("x-set", "old"), ("x-set", "older"), ("x-add", "a"),
               ("x-gone", "z"))  # fmt: skip
    modifier = HeaderModifier(set=(("X-Set", "new"),), add=(("X-Add", "b"), ("X-New", "c")),
                              remove=("X-GONE",))  # fmt: skip
    assert modify_headers(headers, modifier) == (
        ("x-keep", "1"), ("x-add", "a"), ("x-set", "new"), ("x-add", "b"), ("x-new", "c"),
    )  # fmt: skip
    assert modify_headers(headers, None) is headers


@pytest.mark.parametrize(
    ("redirect", "authority", "port", "location"),
    [
        (Redirect(), "echo", 80, "http://echo/p?q=1"),
        (Redirect(), "echo:8080", 8080, "http://echo:8080/p?q=1"),  # the listener's port
        (Redirect(scheme="https"), "echo:8080", 8080, "https://echo/p?q=1"),  # 443: left out
        (Redirect(scheme="http"), "echo:8443", 8443, "http://echo/p?q=1"),
        (Redirect(scheme="https", port=8443), "echo", 80, "https://echo:8443/p?q=1"),
        (Redirect(port=80), "echo", 8080, "http://echo/p?q=1"),
        (Redirect(hostname="example.org"), "echo:80", 80, "http://example.org/p?q=1"),
        (Redirect(port=81), "[fd00::1]:80", 80, "http://[fd00::1]:81/p?q=1"),
        (Redirect(path=PathModifier("ReplaceFullPath", "/new")), "echo", 80,
         "http://echo/new?q=1"),
    ],
)  # fmt: skip
def test_redirect_location(redirect: Redirect, authority: str, port: int, location: str) -> None:
    request = HttpRequest("GET", "/p?q=1", authority)
    assert redirect_location(request, redirect, "", port) == location


def test_url_rewrite_sets_host_and_path_and_keeps_the_query() -> None:
    filters = FilterSet.of(
        [Filter("URLRewrite", rewrite=UrlRewrite("new.example", PathModifier(
            "ReplacePrefixMatch", "/v2")))]
    )  # fmt: skip
    request = HttpRequest("GET", "/v1/items?x=1", "echo", (("a", "b"),))
    rewritten = rewrite_request(request, filters, "/v1")
    assert (rewritten.path, rewritten.authority, rewritten.headers) == (
        "/v2/items?x=1", "new.example", (("a", "b"),),
    )  # fmt: skip
    assert rewrite_request(request, FilterSet(), "/") is request


def test_mirrors_by_fraction() -> None:
    always, never, half = (
        Mirror(BackendRef("a", 1)),
        Mirror(BackendRef("b", 1), 0),
        Mirror(BackendRef("c", 1), 1, 2),
    )
    pairs = [("a", always), ("b", never), ("c", half)]
    assert mirrored(pairs, lambda n: 0) == ("a", "c")
    assert mirrored(pairs, lambda n: n - 1) == ("a",)


def test_filter_set_gathers_by_kind_and_lists_the_unsupported() -> None:
    f = FilterSet.of([Filter("CORS"), Filter("ExtensionRef"), Filter("ExternalAuth")])
    assert (f.cors, f.unsupported) == (Cors(), ("ExtensionRef", "ExternalAuth"))


# --- CORS --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "origin", "ok"),
    [
        (("*",), "https://anything.example:1234", True),
        (("https://www.foo.com",), "https://www.foo.com", True),
        (("https://www.foo.com",), "https://WWW.foo.com", True),
        (("https://www.foo.com",), "http://www.foo.com", False),  # scheme
        (("https://www.foo.com",), "https://www.foo.com:443", True),  # default port
        (("https://www.foo.com",), "https://www.foo.com:8443", False),
        (("http://www.foo.com:8080",), "http://www.foo.com:8080", True),
        (("https://*.bar.com",), "https://www.bar.com", True),
        (("https://*.bar.com",), "https://xpto.www.bar.com", True),  # greedy
        (("https://*.bar.com",), "https://bar.com", False),
        (("https://*.bar.com",), "https://foobar.com", False),
        (("https://*",), "https://foobar.com", True),
        (("https://www.foo.com",), "null", False),
    ],
)
def test_cors_origins(allowed: tuple[str, ...], origin: str, ok: bool) -> None:
    assert cors.origin_allowed(Cors(allowed), origin) is ok


def preflight(settings: Cors, **headers: str) -> dict[str, str]:
    asked = {"origin": "https://www.foo.com", "access-control-request-method": "PUT", **headers}
    request = HttpRequest("OPTIONS", "/", "echo", tuple(asked.items()))
    assert cors.is_preflight(request)
    return dict(cors.preflight(settings, request))


def test_cors_preflight_lists_what_is_allowed() -> None:
    settings = Cors(("https://www.foo.com",), True, ("GET", "OPTIONS"), ("x-header-1",
                    "x-header-2"), ("x-header-3",), 3600)  # fmt: skip
    assert preflight(settings) == {
        "access-control-allow-origin": "https://www.foo.com",
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET, OPTIONS",
        "access-control-allow-headers": "x-header-1, x-header-2",
        "access-control-expose-headers": "x-header-3",
        "access-control-max-age": "3600",
        "vary": "origin",
    }


def test_cors_wildcards_echo_what_the_preflight_asks() -> None:
    settings = Cors(("*",), False, ("*",), ("*",), ("*",))
    answer = preflight(settings, **{"access-control-request-headers": "x-a, x-b"})
    assert answer["access-control-allow-origin"] == "https://www.foo.com"
    assert answer["access-control-allow-methods"] == "PUT"
    assert answer["access-control-allow-headers"] == "x-a, x-b"
    assert answer["access-control-expose-headers"] == "*"
    assert answer["access-control-max-age"] == "5"
    with_credentials = preflight(Cors(("*",), True, ("*",), ("*",), ("*",)))
    assert "access-control-expose-headers" not in with_credentials  # * means literally *
    assert "access-control-allow-headers" not in with_credentials  # none asked for


def test_cors_refuses_other_origins_without_cors_headers() -> None:
    settings = Cors(("https://www.foo.com",))
    assert preflight(settings, origin="https://foobar.com") == {"vary": "origin"}
    request = HttpRequest("GET", "/", "echo", (("origin", "https://foobar.com"),))
    assert cors.response_headers(settings, request) == (("vary", "origin"),)
    assert cors.response_headers(settings, HttpRequest("GET", "/")) == ()


# --- The request value -------------------------------------------------------------------


def test_request_lookups() -> None:
    request = HttpRequest(
        "GET", "/a%20b?x=1&x=2&y=%2Fz&flag&e=&p=a+b", "echo:80",
        (("X-Multi", "a"), ("x-multi", "b"), ("Set-Cookie", "c")),
    )  # fmt: skip
    assert request.headers[0] == ("x-multi", "a")  # names lower-cased
    assert (request.path_only, request.query[:3]) == ("/a%20b", "x=1")
    assert request.query_params == {"x": "1", "y": "/z", "flag": "", "e": "", "p": "a+b"}
    assert request.header("X-MULTI") == "a,b"
    assert request.header("missing") is None
    assert (request.header("host"), request.host) == ("echo:80", "echo")


@pytest.mark.parametrize(
    ("authority", "parts"),
    [
        ("echo", ("echo", None)),
        ("echo:8080", ("echo", 8080)),
        ("10.96.0.1:80", ("10.96.0.1", 80)),
        ("[fd00::1]:443", ("fd00::1", 443)),
        ("[fd00::1]", ("fd00::1", None)),
        ("fd00::1", ("fd00::1", None)),
        ("echo:0", ("echo:0", None)),
        ("echo:65536", ("echo:65536", None)),
        ("echo:8O", ("echo:8O", None)),
    ],
)
def test_split_authority(authority: str, parts: tuple[str, int | None]) -> None:
    assert split_authority(authority) == parts
