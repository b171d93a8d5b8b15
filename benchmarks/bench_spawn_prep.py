"""What casa_hub adds to one spawn, beside making a fresh CA and host/user certificates per spawn.

casa_hub: the real ``CasaSpawnerMixin.casa_prepare`` of a ``CasaLocalProcessSpawner`` (a new spawner
for a new user each call, as for a user's first spawn) with the four grants and integrations of
``casa_settings`` (XCache, ServiceX, HTCondor, MLflow): integrations built and their settings checked,
auth_state decrypted, tokens reused or minted (and auth_state encrypted again), contributions
rendered, the private directories made and the token and config files written 0600, audit and log
lines written to a file. The user object keeps auth_state encrypted with JupyterHub's own
``CryptKeeper``, as the hub does (the database write of the hub is not included).

Baseline, as some facilities do per spawn for Dask TLS: a CA key and self-signed CA certificate,
then a host key and certificate and a user key and certificate signed by that CA, written as PEM
files 0600. RSA 2048 (what dask-gateway and ``distributed.Security.temporary`` generate) and, as a
cheaper variant, EC P-256.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jupyterhub.crypto import CryptKeeper
from jupyterhub.objects import Hub
from traitlets.config import Config

from casa_hub.spawner import CasaLocalProcessSpawner
from casa_hub.tokens.issuer import CasaTokenIssuer
from casa_hub.tokens.store import AUTH_STATE_KEY, store_minted

from . import casa_settings
from .common import Context, Row

TITLE = "spawn_prep"
ORDER = 20
NEEDS_FACILITY = False


class BenchUser:
    """What a spawner uses of JupyterHub's User: name, groups, URL, encrypted auth_state."""

    def __init__(self, name: str, crypt: CryptKeeper, encrypted: bytes) -> None:
        self.name = name
        self.id = 1
        self.groups = [SimpleNamespace(name=casa_settings.GROUP)]
        self.url = f"/user/{name}/"
        self.spawners: dict[str, Any] = {}
        self._crypt, self.encrypted = crypt, encrypted

    async def get_auth_state(self) -> dict[str, Any]:
        return await self._crypt.decrypt(self.encrypted)

    async def save_auth_state(self, state: dict[str, Any]) -> None:
        self.encrypted = await self._crypt.encrypt(state)


def auth_state_after_login(issuer: CasaTokenIssuer, name: str, with_tokens: bool) -> dict[str, Any]:
    """The provider's part of a login's auth_state, with the facility tokens minted at login or not."""
    state = casa_settings.provider_auth_state(name)
    if with_tokens:
        store_minted(state, issuer.mint_all(name, [casa_settings.GROUP]).values())
    return state


# ---- the baseline --------------------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool, usage: x509.ObjectIdentifier | None,
          dns: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def per_spawn_pki(directory: Path, username: str, new_key: Callable[[], Any]) -> None:
    """A fresh CA, a host certificate and a user certificate signed by it, written 0600."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, host_key, user_key = new_key(), new_key(), new_key()
    ca = _cert(f"casa {username} CA", ca_key, f"casa {username} CA", ca_key, True, None)
    host = _cert(f"dask-{username}", host_key, f"casa {username} CA", ca_key, False,
                 ExtendedKeyUsageOID.SERVER_AUTH, dns=f"dask-{username}.bench.invalid")
    user = _cert(username, user_key, f"casa {username} CA", ca_key, False, ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = serialization.Encoding.PEM
    files = {"ca.crt": ca.public_bytes(pem), "host.crt": host.public_bytes(pem), "user.crt": user.public_bytes(pem)}
    for name, key in (("host.key", host_key), ("user.key", user_key)):
        files[name] = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for name, content in files.items():
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)


# ---- the measurement -----------------------------------------------------------------------------

async def _alternate(candidates: dict[str, Callable[[int], Awaitable[None]]], rounds: int, slice_s: float,
                     min_calls: int) -> dict[str, list[float]]:
    """Per-call milliseconds of each candidate; they take turns for ``slice_s`` seconds (at least
    ``min_calls`` calls) in each of ``rounds`` rounds, after one unmeasured call each."""
    counter = 0
    for fn in candidates.values():
        counter += 1
        await fn(counter)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            started = time.perf_counter()
            calls = 0
            while calls < min_calls or time.perf_counter() - started < slice_s:
                counter += 1
                t0 = time.perf_counter()
                await fn(counter)
                samples[name].append((time.perf_counter() - t0) * 1000)
                calls += 1
    return samples


def _logger(path: Path) -> logging.Logger:
    """A logger writing to a file as the hub's log does (audit lines, the spawner's info lines)."""
    log = logging.getLogger("casa_bench.spawn_prep")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(levelname)s %(asctime)s %(name)s] %(message)s"))
    log.handlers[:] = [handler]
    return log


async def measure(ctx: Context, tmp: Path) -> dict[str, list[float]]:
    quick = ctx.options.quick
    log = _logger(tmp / "hub.log")
    config = Config()
    config.CasaTokenIssuer.issuer_url = "https://hub.bench.invalid/hub/casa-issuer"
    config.CasaTokenIssuer.key_dir = str(tmp / "issuer-keys")
    config.CasaTokenIssuer.generate_key_if_missing = "ES256"
    casa_settings.apply(config)
    config.CasaLocalProcessSpawner.home_dir_template = str(tmp / "homes" / "{username}")
    CasaTokenIssuer.clear_instance()
    issuer = CasaTokenIssuer.instance(config=config, log=log)
    crypt = CryptKeeper(keys=[os.urandom(32)])
    hub = Hub(ip="127.0.0.1", port=8081, base_url="/hub/")
    states = {reuse: await crypt.encrypt(auth_state_after_login(issuer, "template", reuse)) for reuse in (True, False)}
    # the stored tokens are the template user's; minted ones are a fresh spawn's (same claims size)
    assert AUTH_STATE_KEY in await crypt.decrypt(states[True])

    def prepare(reuse: bool) -> Callable[[int], Awaitable[None]]:
        async def call(i: int) -> None:
            user = BenchUser(f"user{i}", crypt, states[reuse])
            spawner = CasaLocalProcessSpawner(user=user, hub=hub, config=config, log=log,
                                              api_token=secrets.token_hex(16))
            ctx_ = await spawner.casa_prepare()
            if len(ctx_.tokens) != 4:
                raise RuntimeError(f"casa_prepare obtained {sorted(ctx_.tokens)}, expected four grants")
        return call

    def pki(new_key: Callable[[], Any]) -> Callable[[int], Awaitable[None]]:
        async def call(i: int) -> None:
            per_spawn_pki(tmp / "pki" / f"user{i}", f"user{i}", new_key)
        return call

    candidates = {
        "reuse": prepare(True),
        "mint": prepare(False),
        "rsa": pki(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": pki(lambda: ec.generate_private_key(ec.SECP256R1())),
    }
    try:
        return await _alternate(candidates, rounds=3 if quick else 5, slice_s=0.4 if quick else 1.5,
                                min_calls=3 if quick else 6)
    finally:
        CasaTokenIssuer.clear_instance()
        for h in log.handlers:
            h.close()


def run(ctx: Context) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="casa-bench-spawn-") as tmp:
        samples = asyncio.run(measure(ctx, Path(tmp)))
        files = sorted(p.name for p in (Path(tmp) / "homes" / "user1" / ".casa").rglob("*") if p.is_file())
        modes = {oct(p.stat().st_mode & 0o777) for p in (Path(tmp) / "homes").rglob("*") if p.is_file()}
    if modes != {"0o600"}:
        raise RuntimeError(f"casa_prepare wrote files with modes {modes}, expected 0600 only")

    def fig(name: str) -> dict[str, float]:
        s = sorted(samples[name])
        return {"median ms": statistics.median(s), "p95 ms": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))],
                "n": len(s)}

    f = {name: fig(name) for name in samples}
    rsa_label = f"new CA + host + user certificate, RSA 2048 (n={f['rsa']['n']})"
    ec_label = f"same with EC P-256 keys (n={f['ec']['n']})"
    rows = []
    for case, label in (("reuse", "4 tokens reused from auth_state"), ("mint", "4 tokens minted, auth_state re-encrypted")):
        title = f"casa_prepare, {label} (n={f[case]['n']})"
        rows += [Row(TITLE, title, "median ms", f[case]["median ms"], rsa_label, f["rsa"]["median ms"]),
                 Row(TITLE, title, "p95 ms", f[case]["p95 ms"], rsa_label, f["rsa"]["p95 ms"]),
                 Row(TITLE, title, "median ms", f[case]["median ms"], ec_label, f["ec"]["median ms"])]
    ctx.log("  " + ", ".join(f"{name} {v['median ms']:.2f} ms" for name, v in f.items()))
    ctx.notes.append(
        "spawn_prep: in-process, one call = one spawn of a new user: the real `CasaSpawnerMixin.casa_prepare` "
        "of a `CasaLocalProcessSpawner` created just before (outside the timing) with four grants and the "
        "XCache, ServiceX, HTCondor and MLflow integrations; it builds the integrations and checks their "
        "settings, decrypts auth_state (JupyterHub's `CryptKeeper`, Fernet), reuses the stored tokens or "
        "mints four and encrypts auth_state again, renders `servicex.yaml` and `condor_config`, makes the "
        f"0700 directories and writes {len(files)} files 0600 ({', '.join(files)}), and writes its audit and "
        "log lines to a file. Not included: the hub's database write of auth_state. Baseline: a CA key and "
        "self-signed certificate, then host and user keys and certificates signed by it (SHA-256, 7 days), "
        "5 PEM files written 0600; RSA 2048 as dask-gateway and `distributed.Security.temporary` generate, "
        "and EC P-256. The candidates take turns in rounds after one unmeasured call each."
    )
    return rows
