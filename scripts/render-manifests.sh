#!/usr/bin/env bash
# Regenerate what is derived from the chart, or check that it is current.
#
#   charts/taskplane/files/taskplane.rules.yaml   copy of monitoring/rules/taskplane.rules.yaml
#   charts/taskplane/files/taskplane.json         copy of monitoring/dashboards/taskplane.json
#   charts/taskplane/README.md                    values table, from values.yaml's ## @param lines
#   k8s/taskplane.yaml                            `helm template` of the chart with its defaults
#                                                 (release and namespace "taskplane", no test
#                                                 pod, no Secrets)
#   k8s/taskplane-ha.yaml                         the same with redis.sentinel.enabled (Redis
#                                                 master, two replicas, three sentinels)
#
# Usage: scripts/render-manifests.sh           rewrite the files above
#        scripts/render-manifests.sh --check   change nothing; exit 1 naming every stale file
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/taskplane"
check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

"$ROOT/scripts/chart-tools.sh"
HELM="$ROOT/.tools/bin/helm"
PY="$ROOT/.venv/bin/python"
GEN="$ROOT/tests/chart/tools/chartgen.py"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# Sources on the left, generated files on the right (relative to the repo root).
cp "$ROOT/monitoring/rules/taskplane.rules.yaml" "$out/rules"
cp "$ROOT/monitoring/dashboards/taskplane.json" "$out/dashboard"
"$PY" "$GEN" values-table "$CHART/README.md" "$CHART/values.yaml" > "$out/readme"
# Render from a copy of the chart that already holds the synced files, so the
# manifests follow the monitoring sources even before they are copied in.
cp -r "$CHART" "$out/chart"
cp "$out/rules" "$out/chart/files/taskplane.rules.yaml"
cp "$out/dashboard" "$out/chart/files/taskplane.json"
"$HELM" template taskplane "$out/chart" --namespace taskplane --skip-tests \
    | "$PY" "$GEN" plain-manifests > "$out/k8s"
"$HELM" template taskplane "$out/chart" --namespace taskplane --skip-tests \
    --set redis.sentinel.enabled=true | "$PY" "$GEN" plain-manifests > "$out/k8s-ha"

pairs=(
    "rules:charts/taskplane/files/taskplane.rules.yaml"
    "dashboard:charts/taskplane/files/taskplane.json"
    "readme:charts/taskplane/README.md"
    "k8s:k8s/taskplane.yaml"
    "k8s-ha:k8s/taskplane-ha.yaml"
)
stale=()
for pair in "${pairs[@]}"; do
    src="$out/${pair%%:*}"
    dest="$ROOT/${pair#*:}"
    if ! cmp -s "$src" "$dest"; then
        stale+=("${pair#*:}")
        if [[ "$check" == 0 ]]; then
            cp "$src" "$dest"
            echo "rewrote ${pair#*:}"
        fi
    fi
done

if [[ "$check" == 1 && ${#stale[@]} -gt 0 ]]; then
    echo "stale (run scripts/render-manifests.sh and commit the result):" >&2
    printf '  %s\n' "${stale[@]}" >&2
    exit 1
fi
