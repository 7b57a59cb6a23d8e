#!/usr/bin/env bash
# Find, or install, what `make bench` and the bench smoke tests need; print nothing when
# everything is there.
#
#   wrk                      the load generator: a binary on PATH, else Debian's `wrk`
#   redis-benchmark          Debian's `redis-tools` (redis-server's package depends on it)
#   prometheus               scripts/monitoring-tools.sh (Debian's `prometheus`)
#   helm                     scripts/chart-tools.sh (./.tools/bin/helm): the scaler renders
#                            the chart to read its autoscaler
#   matplotlib               into the project venv (.venv), for the PNGs
#   py-spy                   the CPU breakdown's sampler: `make install` brings it (the dev
#                            extra, pinned in requirements-dev.lock); installed here if missing
#
# Usage: bench/install-tools.sh      Idempotent. Installing needs root (apt-get).
# Set BENCH_TOOLS_VERBOSE=1 to see what it does.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
MATPLOTLIB_SPEC="${MATPLOTLIB_SPEC:-matplotlib>=3.8}"

say() { if [[ "${BENCH_TOOLS_VERBOSE:-0}" == 1 ]]; then echo "bench-tools: $*" >&2; fi; }
die() { echo "bench-tools: $*" >&2; exit 1; }

apt_install() {
    command -v apt-get >/dev/null || die "$* not found and there is no apt-get: install $* yourself"
    [[ "$(id -u)" == 0 ]] || die "$* not found; installing Debian's $* needs root"
    local log
    log="$(mktemp)"
    say "apt-get install --no-install-recommends $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1; then
        apt-get update -qq >>"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 \
            || { cat "$log" >&2; rm -f "$log"; die "apt-get install $* failed"; }
    fi
    rm -f "$log"
}

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [[ ${#need[@]} -gt 0 ]]; then
    apt_install "${need[@]}"
fi

"$ROOT/scripts/monitoring-tools.sh"
"$ROOT/scripts/chart-tools.sh"

[[ -x "$VENV/bin/python" ]] || die "no virtualenv at $VENV: run make install first"
if ! "$VENV/bin/python" -c "import matplotlib" >/dev/null 2>&1; then
    say "pip install $MATPLOTLIB_SPEC into $VENV"
    "$VENV/bin/pip" install -q "$MATPLOTLIB_SPEC" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    "$VENV/bin/python" -c "import matplotlib" || die "matplotlib did not install into $VENV"
fi
if [[ ! -x "$VENV/bin/py-spy" ]]; then
    say "pip install py-spy (pinned by requirements-dev.lock) into $VENV"
    "$VENV/bin/pip" install -q -c "$ROOT/requirements-dev.lock" py-spy 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    [[ -x "$VENV/bin/py-spy" ]] || die "py-spy did not install into $VENV"
fi
say "wrk, redis-benchmark, prometheus, helm, matplotlib and py-spy are there"
