#!/usr/bin/env bash
# Build the cortex and helexa-neuron source RPMs from the working tree, uncommitted work
# included (git archive would take HEAD only). Usage: rpm/build-srpm.sh [OUTDIR]
# (default build/srpm). Installs rpmbuild with apt-get when it is missing and we are root.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mkdir -p "${1:-$root/build/srpm}" && cd "${1:-$root/build/srpm}" && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/cortex/__init__.py")
[[ -n $version ]] || { echo "build-srpm: no __version__ in cortex/__init__.py" >&2; exit 1; }

if ! command -v rpmbuild >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null
    else
        echo "build-srpm: rpmbuild not found (install the rpm package)" >&2
        exit 1
    fi
fi

top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top/SOURCES"

# The tree as on disk, less what .gitignore names (venvs, caches, build output) and VCS data.
# Fixed order and owner; real mtimes (a wheel cannot hold dates before 1980).
tar -C "$root" --exclude-vcs --exclude-vcs-ignores \
    --exclude=./.venv --exclude=./build --exclude=./dist --exclude='__pycache__' \
    --exclude='*.egg-info' --exclude='.*_cache' \
    --sort=name --owner=0 --group=0 --numeric-owner \
    --transform="s,^\.,cortex-$version," \
    -czf "$top/SOURCES/cortex-$version.tar.gz" .
# The units are package data (cortex/systemd/): `cortex systemd-unit` prints them for a pip install.
cp "$root"/cortex/systemd/*.service "$root/rpm/cortex.sysusers" "$top/SOURCES/"

for spec in cortex helexa-neuron; do
    # --nodeps: the BuildRequires are Fedora packages, checked where the binary RPMs are built.
    rpmbuild -bs --nodeps --quiet \
        --define "_topdir $top" --define "_srcrpmdir $out" \
        "$root/rpm/$spec.spec" >/dev/null
done
ls "$out"/*-"$version"-*.src.rpm
