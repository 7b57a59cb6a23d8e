#!/usr/bin/env bash
# Build a stand-in for the Dockerfiles' base image from Debian packages, for machines
# that reach no container registry (CI here): debootstrap a minimal bookworm with its
# Python 3.11, lay it out like the official python:3.11-slim-bookworm image (python,
# python3 and pip in /usr/local/bin, pip and setuptools importable, no PEP 668 marker),
# and import it under the name the Dockerfiles' FROM uses, so the unchanged Dockerfiles
# build against it.
#
# Usage: scripts/standin-base.sh BUILDER IMAGE      (BUILDER: podman or buildah)
# Needs root and debootstrap; takes about a minute. The Debian mirror is the first one
# in this machine's apt sources (override with DEBIAN_MIRROR).
set -euo pipefail
builder="$1"
image="$2"

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
    mirror="$(grep -hsoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

root="$(mktemp -d /var/tmp/taskplane-standin.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "standin-base: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
    bookworm "$root" "$mirror" > "$root.log" 2>&1 || { cat "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# The official image's layout: its own pip and setuptools, importable and uninstallable
# (installed from Debian's wheels, with their RECORD files), and no "externally managed"
# marker.
site="$root/usr/local/lib/python3.11/dist-packages"
mkdir -p "$site" "$root/usr/local/bin"
for wheel in "$root"/usr/share/python-wheels/{pip,setuptools}-*.whl; do
    python3 -m zipfile -e "$wheel" "$site"
done
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
cat > "$root/usr/local/bin/pip" <<'PIP'
#!/usr/local/bin/python3
import sys
from pip._internal.cli.main import main
sys.exit(main())
PIP
chmod 755 "$root/usr/local/bin/pip"
ln -sf pip "$root/usr/local/bin/pip3"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man

tar -C "$root" -c . | "$builder" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null 2>&1
echo "standin-base: imported $image" >&2
