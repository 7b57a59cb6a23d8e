#!/usr/bin/env bash
# Build the API and worker images from Dockerfile.api and Dockerfile.worker with
# whichever OCI builder is present: a running Docker engine, else podman, else buildah.
#
#   scripts/images.sh                 build taskplane-api:$IMAGE_TAG, taskplane-worker:$IMAGE_TAG
#   scripts/images.sh --builder       print the builder that would be used and exit
#
# Environment:
#   IMAGE_TAG        tag of both images (default: local)
#   IMAGE_PREFIX     name prefix, e.g. ghcr.io/you/ (default: none)
#   BUILDER          docker, podman or buildah, instead of the first one found
#   INSTALL_PODMAN   1: with no builder at all, install Debian's podman (needs root and
#                    apt-get; what CI does). Default: 1 as root, 0 otherwise.
#
# The base image is the Dockerfiles' PYTHON_IMAGE (a tag pinned by digest). When the
# builder has neither it nor its tag and cannot pull it (no registry, as in CI here), a
# stand-in is built from Debian packages (scripts/standin-base.sh) under the tag, and
# the build is told PYTHON_IMAGE=<tag>: the Dockerfiles stay the ones users build.
# podman and buildah get this machine's pip index settings and CA bundle mounted into
# `RUN pip install` when pip is configured to need them (a TLS-intercepting proxy).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TAG="${IMAGE_TAG:-local}"
PREFIX="${IMAGE_PREFIX:-}"
say() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }

docker_ok() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# Podman's defaults fail on machines like CI's (rlimits it may not raise, crun and the
# cgroup layout): a config of our own, used only when the machine has none.
podman_env() {
    if [[ ! -f /etc/containers/containers.conf && -z "${CONTAINERS_CONF:-}" ]]; then
        mkdir -p "$ROOT/.tools"
        cat > "$ROOT/.tools/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]
[engine]
runtime = "runc"
CONF
        export CONTAINERS_CONF="$ROOT/.tools/containers.conf"
    fi
}

pick_builder() {
    if [[ -n "${BUILDER:-}" ]]; then echo "$BUILDER"; return; fi
    if docker_ok; then echo docker; return; fi
    if command -v podman >/dev/null; then echo podman; return; fi
    if command -v buildah >/dev/null; then echo buildah; return; fi
    local install="${INSTALL_PODMAN:-$([[ $(id -u) == 0 ]] && echo 1 || echo 0)}"
    if [[ "$install" == 1 ]] && command -v apt-get >/dev/null; then
        say "no Docker engine, podman or buildah: installing Debian's podman"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            podman runc debootstrap >/dev/null
        echo podman
        return
    fi
    die "no OCI builder: install Docker, podman or buildah (or run as root with apt-get)"
}

builder="$(pick_builder)"
if [[ "${1:-}" == "--builder" ]]; then echo "$builder"; exit 0; fi
[[ "$builder" == docker ]] || podman_env

base="$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile.api | head -n1)"
[[ -n "$base" ]] || die "Dockerfile.api has no ARG PYTHON_IMAGE=<image>"
[[ "$base" == "$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile.worker | head -n1)" ]] \
    || die "Dockerfile.api and Dockerfile.worker name different base images"
base_tag="${base%@*}"

have_image() {
    case "$builder" in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        podman) podman image exists "$1" ;;
        buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}

build_args=()
if have_image "$base"; then
    :
elif have_image "$base_tag"; then
    say "using the local $base_tag for $base"
    build_args+=(--build-arg "PYTHON_IMAGE=$base_tag")
elif timeout 120 "$builder" pull "$base" >/dev/null 2>&1; then
    say "pulled $base"
else
    [[ "$builder" == buildah ]] && die "cannot pull $base, and the stand-in needs docker or podman"
    if ! command -v debootstrap >/dev/null; then
        [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null \
            || die "cannot pull $base, and debootstrap is missing for a stand-in"
        say "installing Debian's debootstrap for a stand-in base image"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    say "cannot pull $base: building a stand-in from Debian packages as $base_tag"
    "$ROOT/scripts/standin-base.sh" "$builder" "$base_tag"
    build_args+=(--build-arg "PYTHON_IMAGE=$base_tag")
fi

run_flags=()
if [[ "$builder" != docker ]]; then
    run_flags+=(--pull=never --format docker --network host)
    # This machine's package index and CA bundle, for RUN pip install, when pip here is
    # configured with them (e.g. behind a TLS-intercepting proxy).
    cert="${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}"
    index="${PIP_INDEX_URL:-$(pip3 config get global.index-url 2>/dev/null || true)}"
    if [[ -n "$cert" || -n "$index" ]]; then
        mkdir -p "$ROOT/.tools"
        { echo "[global]"
          [[ -n "$index" ]] && echo "index-url = $index"
          [[ -n "$cert" ]] && echo "cert = /etc/ssl/certs/ca-certificates.crt"
        } > "$ROOT/.tools/build-pip.conf"
        run_flags+=(-v "$ROOT/.tools/build-pip.conf:/etc/pip.conf:ro")
        [[ -n "$cert" ]] && run_flags+=(-v "$cert:/etc/ssl/certs/ca-certificates.crt:ro")
    fi
fi

for component in api worker; do
    image="${PREFIX}taskplane-$component:$TAG"
    start=$(date +%s)
    case "$builder" in
        docker) docker build "${build_args[@]}" -f "Dockerfile.$component" -t "$image" . >&2 ;;
        podman) podman build -q "${run_flags[@]}" "${build_args[@]}" -f "Dockerfile.$component" -t "$image" . >/dev/null ;;
        buildah) buildah bud -q "${run_flags[@]}" "${build_args[@]}" -f "Dockerfile.$component" -t "$image" . >/dev/null ;;
    esac
    say "built $image with $builder in $(( $(date +%s) - start ))s"
done
