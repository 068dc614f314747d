#!/usr/bin/env python3
"""Generate the secrets of one kustomize overlay: fresh tokens per role, and what each pod gets.

    python3 deploy/tools/make-secrets.py deploy/k8s/overlays/dev
    python3 deploy/tools/make-secrets.py deploy/k8s/overlays/gpu --database-url postgresql://...

Writes OVERLAY/secrets/ (git-ignored), read by the overlay's secretGenerator:
- verifiers.env      sha256 verifiers of every role's tokens: the registry checks all of them,
                     workers and the benchmark service check their callers' (no usable token);
- worker.env         the token workers present to the registry (watch, read, heartbeat);
- benchmark.env      the token the benchmark service presents (read, stage, record runs; and to
                     workers, to call their models);
- database.env       the registry's database URL (dev: also postgres.env, its PostgreSQL's
                     credentials);
and, for you only (never referenced by kustomize, so never in the cluster): admin.token and
reader.token, the tokens to give the CLI (MODELYARD_TOKEN) and backend services.

Existing files are kept, so re-running it changes nothing; delete secrets/ to rotate everything.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
from pathlib import Path


def _token() -> str:
    return secrets.token_urlsafe(32)


def _verifier(name: str, token: str) -> str:
    return f"{name}:sha256:{hashlib.sha256(token.encode()).hexdigest()}"


def _write(path: Path, text: str) -> bool:
    """Create `path` (0600) unless it exists; True when written."""
    if path.exists():
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overlay", type=Path, help="the overlay directory, e.g. deploy/k8s/overlays/dev")
    parser.add_argument(
        "--database-url", help="the registry's PostgreSQL URL (required unless the overlay runs its own)"
    )
    args = parser.parse_args(argv)
    overlay: Path = args.overlay
    if not (overlay / "kustomization.yaml").is_file():
        print(f"error: {overlay} is not a kustomize overlay (no kustomization.yaml)", file=sys.stderr)
        return 2
    own_postgres = (overlay / "postgres.yaml").is_file()
    out = overlay / "secrets"
    out.mkdir(mode=0o700, exist_ok=True)

    database = out / "database.env"
    if not database.exists() and not own_postgres and not args.database_url:
        print(f"error: {overlay} runs no PostgreSQL of its own; pass --database-url", file=sys.stderr)
        return 2
    if own_postgres:
        password = _token()
        if _write(
            out / "postgres.env",
            f"POSTGRES_USER=modelyard\nPOSTGRES_PASSWORD={password}\nPOSTGRES_DB=modelyard\n",
        ):
            _write(database, f"url=postgresql://modelyard:{password}@postgres:5432/modelyard\n")
    elif args.database_url:
        _write(database, f"url={args.database_url}\n")

    tokens = {role: _token() for role in ("admin", "reader", "worker", "benchmark")}
    for role in ("admin", "reader"):
        _write(out / f"{role}.token", tokens[role] + "\n")
        tokens[role] = (out / f"{role}.token").read_text(encoding="utf-8").strip()
    for role in ("worker", "benchmark"):
        _write(out / f"{role}.env", f"TOKEN={tokens[role]}\n")
        tokens[role] = _read_env(out / f"{role}.env")["TOKEN"]
    names = {"admin": "ops", "reader": "backend", "worker": "workers", "benchmark": "benchmark"}
    # Derived from the tokens above, so always rewritten.
    (out / "verifiers.env").unlink(missing_ok=True)
    _write(
        out / "verifiers.env",
        "".join(f"{role.upper()}_TOKENS={_verifier(names[role], tokens[role])}\n" for role in names),
    )
    print(f"secrets for {overlay} in {out}")
    print(f"  CLI / operators: MODELYARD_TOKEN=$(cat {out / 'admin.token'})")
    print(f"  backend services: the reader token in {out / 'reader.token'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
