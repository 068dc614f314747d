"""What `modelyard up` hands each process it starts: TLS material and only its own role's token.

With auth on, the registry learns every role's tokens as `sha256:` verifiers only; each worker gets
its own worker token, the benchmark service a benchmark token, `up` an admin token of its own for
seeding; servers that check callers (workers, benchmark) get verifiers, never usable tokens. The
user's own tokens (MODELYARD_ADMIN_TOKENS / MODELYARD_READER_TOKENS in `up`'s environment) become
verifiers before any child sees them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.client.settings import ClientSettings
from modelyard.common.auth import Role, new_token, token_verifier, verifiers_only

# What a child must never inherit from `up`'s environment: it gets its own values or none.
_SECRET_ENV = (
    "MODELYARD_TOKEN",
    "MODELYARD_ADMIN_TOKENS",
    "MODELYARD_READER_TOKENS",
    "MODELYARD_WORKER_TOKENS",
    "MODELYARD_BENCHMARK_TOKENS",
    "MODELYARD_TLS_KEY_FILE",
    "MODELYARD_TLS_CLIENT_KEY_FILE",
)
_TLS_ENV = ("MODELYARD_TLS", "MODELYARD_TLS_CA_FILE", "MODELYARD_TLS_CERT_FILE", "MODELYARD_TLS_KEY_FILE")
_CERT_DAYS = 365
_CA_KEY_USAGE = {
    "digital_signature": False,
    "content_commitment": False,
    "key_encipherment": False,
    "data_encipherment": False,
    "key_agreement": False,
    "key_cert_sign": True,
    "crl_sign": True,
    "encipher_only": False,
    "decipher_only": False,
}


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass
class StackSecurity:
    """TLS and tokens for one `modelyard up`; `None`/empty where that part is off."""

    tls: TlsFiles | None = None
    admin_tokens: str = ""  # verifiers of the user's admin tokens
    reader_tokens: str = ""  # verifiers of the user's reader tokens
    up_token: str = ""
    benchmark_token: str = ""
    worker_tokens: dict[str, str] = field(default_factory=dict)  # worker name -> token
    generated: dict[str, Path] = field(default_factory=dict)  # role -> file holding a generated token

    @property
    def auth(self) -> bool:
        return bool(self.up_token)

    def worker_token(self, name: str) -> str:
        if name not in self.worker_tokens:
            self.worker_tokens[name] = new_token()
        return self.worker_tokens[name]

    def _tls_env(self, *, server: bool) -> dict[str, str]:
        if self.tls is None:
            return {}
        env = {"MODELYARD_TLS": "true", "MODELYARD_TLS_CA_FILE": str(self.tls.ca_file)}
        if server:
            env["MODELYARD_TLS_CERT_FILE"] = str(self.tls.cert_file)
            env["MODELYARD_TLS_KEY_FILE"] = str(self.tls.key_file)
        return env

    def _admin_verifiers(self) -> str:
        return _join(self.admin_tokens, f"modelyard-up:{token_verifier(self.up_token)}")

    def registry_env(self) -> dict[str, str]:
        env = self._tls_env(server=True)
        if self.auth:
            workers = ",".join(f"{n}:{token_verifier(t)}" for n, t in sorted(self.worker_tokens.items()))
            env.update(
                MODELYARD_ADMIN_TOKENS=self._admin_verifiers(),
                MODELYARD_READER_TOKENS=self.reader_tokens,
                MODELYARD_WORKER_TOKENS=workers,
                MODELYARD_BENCHMARK_TOKENS=f"benchmark:{token_verifier(self.benchmark_token)}",
            )
        return env

    def worker_env(self, name: str) -> dict[str, str]:
        env = self._tls_env(server=True)
        if self.auth:
            env.update(
                MODELYARD_TOKEN=self.worker_token(name),
                # Who may call its models: users and the benchmark service, checked by verifier.
                MODELYARD_ADMIN_TOKENS=self._admin_verifiers(),
                MODELYARD_READER_TOKENS=self.reader_tokens,
                MODELYARD_BENCHMARK_TOKENS=f"benchmark:{token_verifier(self.benchmark_token)}",
            )
        return env

    def benchmark_env(self) -> dict[str, str]:
        env = self._tls_env(server=True)
        if self.auth:
            env.update(
                MODELYARD_TOKEN=self.benchmark_token,
                MODELYARD_ADMIN_TOKENS=self._admin_verifiers(),
                MODELYARD_READER_TOKENS=self.reader_tokens,
            )
        return env

    def console_env(self) -> dict[str, str]:
        """The console serves HTTPS with the stack's certificate and checks the services with its
        CA; it learns the users' verifiers (to tell an admin from a reader at login) and holds no
        token of its own: it forwards the one each user logs in with."""
        env = self._tls_env(server=True)
        if self.auth:
            env.update(MODELYARD_ADMIN_TOKENS=self.admin_tokens, MODELYARD_READER_TOKENS=self.reader_tokens)
        return env

    def up_client(self, timeout_s: float) -> ClientSettings:
        """How `up` itself calls the registry (seeding, readiness)."""
        return ClientSettings(
            token=self.up_token or None,
            tls=self.tls is not None,
            tls_ca_file=str(self.tls.ca_file) if self.tls else None,
            timeout_s=timeout_s,
        )

    def describe(self) -> dict[str, object]:
        """For stack.json and the user: where things are, never a token."""
        return {
            "tls_ca_file": str(self.tls.ca_file) if self.tls else "",
            "auth": self.auth,
            "token_files": {role: str(path) for role, path in self.generated.items()},
        }


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """`env` minus the token and TLS variables a child must get from `StackSecurity` or not at all."""
    return {k: v for k, v in env.items() if k not in _SECRET_ENV and k not in _TLS_ENV}


def _join(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def prepare_security(
    data_dir: Path, env: Mapping[str, str], *, tls: bool, auth: bool, host: str
) -> StackSecurity:
    """Read the user's TLS and token settings from `env`; generate what `--tls`/`--auth` ask for
    and the user did not provide (kept in `data_dir`, reused by the next `up`)."""
    security = StackSecurity()
    if env.get("MODELYARD_TLS_CERT_FILE"):
        cert, key = env["MODELYARD_TLS_CERT_FILE"], env.get("MODELYARD_TLS_KEY_FILE", "")
        ca = env.get("MODELYARD_TLS_CA_FILE") or cert
        security.tls = TlsFiles(Path(ca), Path(cert), Path(key))
    elif tls:
        security.tls = ensure_certificates(data_dir / "tls", host)
    admin = env.get("MODELYARD_ADMIN_TOKENS", "")
    reader = env.get("MODELYARD_READER_TOKENS", "")
    if auth and not admin:
        credentials = data_dir / "credentials"
        admin_token = _stored_token(credentials / "admin.token")
        reader_token = _stored_token(credentials / "reader.token")
        admin, reader = f"admin:{admin_token}", _join(reader, f"reader:{reader_token}")
        security.generated = {"admin": credentials / "admin.token", "reader": credentials / "reader.token"}
    if admin or reader:
        security.admin_tokens = verifiers_only(admin, Role.ADMIN)
        security.reader_tokens = verifiers_only(reader, Role.READER)
        security.up_token = new_token()
        security.benchmark_token = new_token()
    return security


def _stored_token(path: Path) -> str:
    """The token kept in `path` (0600), made on first use."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def ensure_certificates(directory: Path, host: str) -> TlsFiles:
    """A private CA and a server certificate for localhost, 127.0.0.1, ::1 and `host`, made once
    and reused while valid for at least a week more."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if all(p.exists() for p in (files.ca_file, files.cert_file, files.key_file)):
        current = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        if current.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=7):
            return files
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelyard up local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(**_CA_KEY_USAGE), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for address in {"127.0.0.1", "::1", host}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    return files
