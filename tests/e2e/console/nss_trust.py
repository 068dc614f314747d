"""A browser's own trust in a private CA: an NSS database (`HOME/.pki/nssdb`, where Chromium on
Linux reads the certificates a user added) holding the CA with the trust a user gives it, made with
NSS's `certutil` (Debian's libnss3-tools, installed by `make tools` beside chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from console_support import INSTALL_HINT


def home_trusting(home: Path, ca_file: Path) -> Path:
    """`home` with an NSS database that trusts `ca_file` for TLS servers (`certutil -t C,,`); run
    Chromium with this HOME and it accepts the CA's certificates as after a user imported it."""
    certutil = shutil.which("certutil")
    if certutil is None:
        pytest.fail(f"certutil is needed to make Chromium trust the stack's CA; {INSTALL_HINT}")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    for args in (
        ["-N", "--empty-password"],
        ["-A", "-n", "modelyard test CA", "-t", "C,,", "-i", str(ca_file)],
    ):
        done = subprocess.run(
            [certutil, "-d", f"sql:{nssdb}", *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"certutil {' '.join(args)} failed in {nssdb}: {done.stderr.strip()}")
    return home
