"""The certificate manager against the real in-process CA, on Trio's virtual clock."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

import pytest
import structlog
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization

from ca import CertificateAuthority, LocalSigner
from mesh.backoff import Backoff
from mesh.certs import (
    BadCaResponse,
    CaRefused,
    CaUnreachable,
    RenewalPolicy,
    SignedChain,
    Signer,
    open_certificate_manager,
)
from mesh.identity import SpiffeId, WorkloadCertificate, build_csr, generate_key

WEB = SpiffeId("cluster.local", "default", "web")
DB = SpiffeId("cluster.local", "default", "db")
A_YEAR = 365 * 86400.0
POLICY = RenewalPolicy(backoff=Backoff(initial=1.0, maximum=8.0, jitter=False))


@dataclass
class SwitchableAuthorizer:
    """A real authorizer whose answer the test changes: the CA starts or stops allowing."""

    allow: bool = True

    def may_issue(self, caller: str, identity: SpiffeId) -> bool:
        return self.allow


@dataclass
class RecordingSigner:
    """Passes every request on, noting when (Trio time) it was made; can play 'CA down'."""

    inner: Signer
    down: bool = False
    calls: list[float] = field(default_factory=list)

    async def sign(self, csr_pem: bytes, ttl_seconds: int | None) -> SignedChain:
        self.calls.append(trio.current_time())
        if self.down:
            raise CaUnreachable("unreachable", "cannot connect to the CA (test: it is down)")
        return await self.inner.sign(csr_pem, ttl_seconds)


@pytest.fixture
def authority() -> CertificateAuthority:
    return CertificateAuthority.create(intermediate=True)


@pytest.fixture
def authorizer() -> SwitchableAuthorizer:
    return SwitchableAuthorizer()


@pytest.fixture
def signer(authority: CertificateAuthority, authorizer: SwitchableAuthorizer) -> RecordingSigner:
    return RecordingSigner(LocalSigner(authority, caller="node-a", authorizer=authorizer))


def public_der(cert: WorkloadCertificate) -> tuple[bytes, bytes]:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return (
        cert.key.public_key().public_bytes(der, spki),
        cert.leaf.public_key().public_bytes(der, spki),
    )


def seconds_to_half_life(cert: WorkloadCertificate) -> float:
    return (cert.renew_at() - dt.datetime.now(dt.UTC)).total_seconds()


async def test_fetch_now_gives_a_certificate_for_a_local_key(signer: RecordingSigner) -> None:
    with trio.fail_after(10):
        async with open_certificate_manager(signer) as manager:
            assert manager.get(WEB) is None
            cert = await manager.fetch_now(WEB)
            assert manager.get(WEB) is cert
            assert manager.get(DB) is None
    key_of_cert, key_in_leaf = public_der(cert)
    assert key_of_cert == key_in_leaf
    assert cert.identity == WEB
    assert len(cert.chain) == 2


async def test_renews_at_half_life_and_replaces_the_certificate(
    signer: RecordingSigner, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(A_YEAR):
        async with open_certificate_manager(signer, policy=POLICY) as manager:
            first = await manager.fetch_now(WEB)
            start, half_life = trio.current_time(), seconds_to_half_life(first)
            assert 12 * 3600 - 120 < half_life <= 12 * 3600

            await trio.sleep_until(start + half_life - 1)
            assert manager.get(WEB) is first
            await trio.sleep_until(start + half_life + 1)

            second = manager.get(WEB)
            assert second is not None
            assert second is not first
            assert second.leaf.serial_number != first.leaf.serial_number
            assert public_der(second)[0] != public_der(first)[0]  # a fresh key each time
            assert public_der(second)[0] == public_der(second)[1]
            assert signer.calls[1] - start == pytest.approx(half_life, abs=1)
            assert manager.statistics().renewals == 1


@pytest.mark.parametrize("failure", ["authorizer-denies", "ca-down"])
async def test_failed_renewal_keeps_the_old_certificate_and_backs_off(
    signer: RecordingSigner,
    authorizer: SwitchableAuthorizer,
    autojump_clock: trio.testing.MockClock,
    failure: str,
) -> None:
    def fail(on: bool) -> None:
        if failure == "authorizer-denies":
            authorizer.allow = not on
        else:
            signer.down = on

    with structlog.testing.capture_logs() as logs, trio.fail_after(A_YEAR):
        async with open_certificate_manager(signer, policy=POLICY) as manager:
            first = await manager.fetch_now(WEB)
            fail(True)
            await trio.sleep(seconds_to_half_life(first) + 1 + 2 + 4 + 8 + 8 + 1)
            assert manager.get(WEB) is first
            attempts = signer.calls[1:]
            gaps = [b - a for a, b in itertools.pairwise(attempts)]
            assert gaps == pytest.approx([1, 2, 4, 8, 8])  # doubling, capped at the maximum

            fail(False)
            await trio.sleep(8)
            renewed = manager.get(WEB)
            assert renewed is not None
            assert renewed is not first
            assert manager.statistics().renewal_failures == 6
            assert manager.statistics().renewals == 1
    failures = [e for e in logs if e["event"] == "workload_certificate_renewal_failed"]
    expected_reason = "not-authorized" if failure == "authorizer-denies" else "unreachable"
    assert {e["reason"] for e in failures} == {expected_reason}
    assert [e["retry_in"] for e in failures] == [1, 2, 4, 8, 8, 8]
    assert all(e["identity"] == str(WEB) for e in failures)


async def test_fetch_now_reschedules_renewal(
    signer: RecordingSigner, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(A_YEAR):
        async with open_certificate_manager(signer) as manager:
            first = await manager.fetch_now(WEB)
            await trio.sleep(seconds_to_half_life(first) / 2)
            second = await manager.fetch_now(WEB)
            refetched_at = trio.current_time()
            assert manager.get(WEB) is second
            await trio.sleep(seconds_to_half_life(second) + 1)
    assert len(signer.calls) == 3
    assert signer.calls[2] - refetched_at == pytest.approx(seconds_to_half_life(second), abs=2)


async def test_fetch_now_failure_raises_and_caches_nothing(
    signer: RecordingSigner, authorizer: SwitchableAuthorizer
) -> None:
    authorizer.allow = False
    with trio.fail_after(10):
        async with open_certificate_manager(signer) as manager:
            with pytest.raises(CaRefused) as info:
                await manager.fetch_now(WEB)
            assert manager.get(WEB) is None
    assert (info.value.status, info.value.reason) == (403, "not-authorized")


async def test_forget_stops_renewal(
    signer: RecordingSigner, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(A_YEAR):
        async with open_certificate_manager(signer) as manager:
            first = await manager.fetch_now(WEB)
            manager.forget(WEB)
            assert manager.get(WEB) is None
            await trio.sleep(seconds_to_half_life(first) * 3)
    assert len(signer.calls) == 1


async def test_several_identities_renew_independently(
    signer: RecordingSigner, autojump_clock: trio.testing.MockClock
) -> None:
    short = RenewalPolicy(ttl_seconds=3600)
    with trio.fail_after(A_YEAR):
        async with open_certificate_manager(signer, policy=short) as manager:
            web = await manager.fetch_now(WEB)
            db = await manager.fetch_now(DB)
            # Both past their half-life: db was issued later (in wall-clock time, which a
            # loaded machine stretches), so its half-life comes later too.
            await trio.sleep(max(seconds_to_half_life(web), seconds_to_half_life(db)) + 1)
            assert manager.get(WEB) is not web
            assert manager.get(DB) is not db
            assert manager.statistics().identities == 2


@dataclass
class WrongKeySigner:
    """A broken CA: certifies a key of its own choosing instead of the one in the CSR."""

    authority: CertificateAuthority

    async def sign(self, csr_pem: bytes, ttl_seconds: int | None) -> SignedChain:
        await trio.lowlevel.checkpoint()
        issued = self.authority.sign_csr(build_csr(WEB, generate_key()), caller="broken")
        return issued.chain, issued.bundle


async def test_refuses_a_certificate_for_another_key(authority: CertificateAuthority) -> None:
    with trio.fail_after(10):
        async with open_certificate_manager(WrongKeySigner(authority)) as manager:
            with pytest.raises(BadCaResponse) as info:
                await manager.fetch_now(WEB)
            assert manager.get(WEB) is None
    assert info.value.reason == "wrong-key"


async def test_refuses_a_certificate_for_another_identity(authority: CertificateAuthority) -> None:
    with trio.fail_after(10):
        async with open_certificate_manager(WrongKeySigner(authority)) as manager:
            with pytest.raises(BadCaResponse) as info:
                await manager.fetch_now(DB)
    assert info.value.reason == "wrong-identity"
