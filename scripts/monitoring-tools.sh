#!/usr/bin/env bash
# Find, or install, the tools the monitoring checks need; print nothing when they are there.
#
#   prometheus, promtool   binaries on PATH when both exist, else Debian's `prometheus`
#                          package (apt-get install --no-install-recommends: without the
#                          flag apt pulls in ~35 packages, node-exporter among them)
#
# Installing the package must not leave Debian's own Prometheus daemon running: the
# tests start their own Prometheus on a free port with their own configuration. So
# the install runs behind a policy-rc.d that forbids service starts (Docker images
# usually ship one; if this machine has none, a temporary one is put in place and
# removed afterwards), and any prometheus process that appeared during the install
# anyway is stopped by its pid.
#
# Usage: scripts/monitoring-tools.sh [--print-path]
#   --print-path   print the directory holding promtool and prometheus, and exit 0
# Idempotent. Needs root (or passwordless apt) only when it has to install.
# Set MONITORING_TOOLS_VERBOSE=1 to see what it does.
set -euo pipefail

say() { if [[ "${MONITORING_TOOLS_VERBOSE:-0}" == 1 ]]; then echo "monitoring-tools: $*" >&2; fi; }
die() { echo "monitoring-tools: $*" >&2; exit 1; }

have_tools() { command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; }

if [[ "${1:-}" == "--print-path" ]]; then
    have_tools || die "promtool/prometheus not found: run $0 first"
    dirname "$(command -v promtool)"
    exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--print-path]" >&2; exit 2; }

if have_tools; then
    say "using $(command -v promtool) and $(command -v prometheus)"
    exit 0
fi

command -v apt-get >/dev/null || die "promtool/prometheus are not on PATH and there is no apt-get: install Prometheus 2.x yourself"
[[ "$(id -u)" == 0 ]] || die "promtool/prometheus are not on PATH; installing Debian's prometheus package needs root"

prometheus_pids() { pgrep -x prometheus 2>/dev/null | sort || true; }
before="$(prometheus_pids)"

POLICY=/usr/sbin/policy-rc.d
own_policy=0
cleanup() { if [[ "$own_policy" == 1 ]]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\n# temporary, from taskplane scripts/monitoring-tools.sh\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    own_policy=1
    say "temporary $POLICY forbids service starts during the install"
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
install_pkg() {
    apt-get install -y -qq --no-install-recommends prometheus >"$log" 2>&1
}
say "apt-get install --no-install-recommends prometheus"
if ! install_pkg; then
    say "install failed; apt-get update and retry"
    apt-get update -qq >>"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; die "apt-get update failed"; }
    install_pkg || { cat "$log" >&2; rm -f "$log"; die "apt-get install prometheus failed"; }
fi
rm -f "$log"

# A prometheus process that was not running before the install, and runs as the
# package's user, came from the package's init script: stop it by pid so it does not
# hold :9090.
after="$(prometheus_pids)"
new="$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | grep -v '^$' || true)"
for pid in $new; do
    # Debian's daemon runs as the package's user `prometheus`; a test's runs as us.
    if [[ "$(stat -c %U "/proc/$pid" 2>/dev/null)" == prometheus ]]; then
        say "stopping the package's prometheus daemon (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
done

have_tools || die "the prometheus package is installed but promtool/prometheus are still not on PATH"
say "installed $(promtool --version 2>&1 | head -n1)"
