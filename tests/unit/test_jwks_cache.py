"""The JWKS cache on Trio's mock clock: first fetch, refresh, the last good set kept through
failures, fail closed before any fetch, one fetch at a time per URI."""

from __future__ import annotations

import trio
import trio.testing
from structlog.testing import capture_logs

from mesh.backoff import Backoff
from mesh.model_l7 import JwtRule
from tests.jwt_support import ISSUER, claims, ec_key, jwks, rsa_key
from waypoint.jwks import JwksCache, JwksFetchError
from waypoint.jwt import JwtFailure, Provider, authenticate

URI = "http://issuer.example/jwks"
RULE = JwtRule(issuer=ISSUER, jwks_uri=URI)
RSA = rsa_key()
EC = ec_key()


class FakeIssuer:
    """Serves ``documents`` in turn (the last one again and again) after 0.1 s; an exception
    is raised, ``None`` never answers."""

    def __init__(self, *documents: str | Exception | None) -> None:
        self.documents = list(documents)
        self.calls: list[float] = []

    async def __call__(self, uri: str) -> bytes:
        assert uri == URI
        self.calls.append(trio.current_time())
        document = self.documents.pop(0) if len(self.documents) > 1 else self.documents[0]
        await trio.sleep(0.1)
        if document is None:
            await trio.sleep_forever()
        if isinstance(document, Exception):
            raise document
        assert isinstance(document, str)
        return document.encode()


def verdict(cache: JwksCache, token: str) -> JwtFailure | None:
    providers = (Provider(RULE, "default/ra"),)
    return authenticate(
        providers, [("authorization", f"Bearer {token}")], "/", cache.keys_for
    ).failure


def cache_for(issuer: FakeIssuer) -> JwksCache:
    return JwksCache(issuer, refresh_interval=600, timeout=5, backoff=Backoff(1, 60, jitter=False))


async def test_never_fetched_fails_closed_then_serve_fetches_what_was_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    issuer = FakeIssuer(jwks(RSA))
    cache = cache_for(issuer)
    token = RSA.sign(claims())
    assert verdict(cache, token) is JwtFailure.FETCH_FAILED  # and URI is now wanted
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.serve)
            await trio.sleep(1)
            assert verdict(cache, token) is None
            assert len(issuer.calls) == 1
            nursery.cancel_scope.cancel()


async def test_refreshes_every_interval_and_picks_up_rotated_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    issuer = FakeIssuer(jwks(RSA), jwks(EC))
    cache = cache_for(issuer)
    cache.want([URI])
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.serve)
            await trio.sleep(1)
            assert verdict(cache, EC.sign(claims())) is JwtFailure.NO_MATCHING_KEY
            await trio.sleep(600)
            assert verdict(cache, EC.sign(claims())) is None
            await trio.sleep(1200)
            nursery.cancel_scope.cancel()
    assert [round(t) for t in issuer.calls] == [0, 600, 1200, 1800]


async def test_a_failed_refresh_keeps_the_last_good_set_and_retries_on_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    issuer = FakeIssuer(jwks(RSA), JwksFetchError(f"{URI}: answered 503"), "not json", jwks(RSA))
    cache = cache_for(issuer)
    cache.want([URI])
    token = RSA.sign(claims())
    with trio.fail_after(3600), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.serve)
            await trio.sleep(601)  # the refresh at 600 failed
            assert verdict(cache, token) is None
            stats = cache.statistics()[URI]
            assert (stats["keys"], stats["failures"], stats["error"]) == (
                1,
                1,
                f"{URI}: answered 503",
            )
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert [round(t) for t in issuer.calls] == [0, 600, 601, 603]  # retries after 1 s, 2 s
    failed = [e for e in logs if e["event"] == "jwks_fetch_failed"]
    assert [(e["failures"], e["serving"]) for e in failed] == [
        (1, "last good set"),
        (2, "last good set"),
    ]
    assert failed[1]["reason"] == "Jwks is an invalid JSON"
    assert cache.statistics()[URI]["failures"] == 0


async def test_a_fetch_that_never_answers_times_out(autojump_clock: trio.testing.MockClock) -> None:
    cache = cache_for(FakeIssuer(None))
    with trio.fail_after(60):
        assert await cache.fetch(URI) is None
    assert cache.statistics()[URI]["error"] == "no answer within 5 s"
    assert verdict(cache, RSA.sign(claims())) is JwtFailure.FETCH_FAILED


async def test_concurrent_fetches_of_one_uri_share_one_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    issuer = FakeIssuer(jwks(RSA))
    cache = cache_for(issuer)
    results = []

    async def fetch() -> None:
        results.append(await cache.fetch(URI))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(fetch)
    assert len(issuer.calls) == 1
    assert all(r is not None and r is results[0] for r in results)


async def test_want_forgets_uris_no_rule_names_and_inline_jwks_wins() -> None:
    cache = JwksCache(FakeIssuer(jwks(RSA)))
    cache.want([URI, "http://old.example/jwks"])
    cache.want([URI])
    assert list(cache.statistics()) == [URI]
    inline = JwtRule(issuer=ISSUER, jwks=jwks(EC), jwks_uri="http://unused.example/jwks")
    assert cache.keys_for(inline) is not None
    assert list(cache.statistics()) == [URI]
