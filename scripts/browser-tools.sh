#!/usr/bin/env bash
# Find, or install, the headless browser the Flower test screenshots its dashboard with;
# print nothing when it is there.
#
#   chromium   a binary on PATH, else Debian's `chromium` (apt-get install
#              --no-install-recommends: the headless screenshot needs no more)
#
# Usage: scripts/browser-tools.sh      Idempotent. Installing needs root (apt-get).
# The Flower test runs it when chromium is missing, so `make test` on a fresh CI
# machine installs it. Set BROWSER_TOOLS_VERBOSE=1 to see what it does.
set -euo pipefail

say() { if [[ "${BROWSER_TOOLS_VERBOSE:-0}" == 1 ]]; then echo "browser-tools: $*" >&2; fi; }
die() { echo "browser-tools: $*" >&2; exit 1; }

if command -v chromium >/dev/null 2>&1; then
    say "using $(command -v chromium)"
    exit 0
fi
command -v apt-get >/dev/null || die "chromium is not on PATH and there is no apt-get: install Chromium yourself"
[[ "$(id -u)" == 0 ]] || die "chromium is not on PATH; installing Debian's chromium needs root"

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
say "apt-get install --no-install-recommends chromium"
if ! apt-get install -y -qq --no-install-recommends chromium >"$log" 2>&1; then
    say "install failed; apt-get update and retry"
    apt-get update -qq >>"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1 \
        || { cat "$log" >&2; die "apt-get install chromium failed"; }
fi
command -v chromium >/dev/null || die "the chromium package is installed but chromium is not on PATH"
say "installed $(chromium --version 2>/dev/null || echo chromium)"
