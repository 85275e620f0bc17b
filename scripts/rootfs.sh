#!/usr/bin/env bash
# Builds (or reuses) a Debian bookworm root file system with mmdebstrap and
# prints its directory. Shared by tests/image_test.sh and
# scripts/fresh-machine-check.sh.
#
#   scripts/rootfs.sh VARIANT PACKAGES_FILE|- [CACHE_DIR]
#
# VARIANT is mmdebstrap's (minbase, important, ...). The packages are read
# from PACKAGES_FILE (one a line, `#` comments) or not at all with `-`. The
# result is cached under CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/recstream/rootfs),
# keyed by the variant and the package list, so a second call with the same
# list returns at once. The cached tree is a template: callers copy it
# (`cp -a`) before changing anything in it.
#
# Exit codes: 0 and the directory on stdout; 77 when this machine cannot
# build one (not root, no mmdebstrap, Debian's mirror unreachable), with the
# reason on stderr; 1 when mmdebstrap itself fails.
set -euo pipefail

variant=${1:?usage: rootfs.sh VARIANT PACKAGES_FILE|- [CACHE_DIR]}
list=${2:?usage: rootfs.sh VARIANT PACKAGES_FILE|- [CACHE_DIR]}
cache=${3:-${XDG_CACHE_HOME:-$HOME/.cache}/recstream/rootfs}
suite=bookworm
mirror=${RECSTREAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}

skip() { echo "rootfs: cannot build a root file system here: $*" >&2; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "not root"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (scripts/install-deps.sh installs it)"

packages=""
if [ "$list" != "-" ]; then
  packages=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$' | sort | paste -sd, -)
fi
key=$(printf '%s\n%s\n%s\n%s\n' "$suite" "$variant" "$mirror" "$packages" | sha256sum | cut -c1-16)
dir="$cache/$suite-$variant-$key"
if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi

curl -fsS --max-time 15 -o /dev/null "$mirror/dists/$suite/Release" ||
  skip "Debian's mirror $mirror is not reachable"

mkdir -p "$cache"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
args=(--variant="$variant" --quiet)
[ -n "$packages" ] && args+=(--include="$packages")
if ! mmdebstrap "${args[@]}" "$suite" "$tmp" "$mirror" >&2; then
  echo "rootfs: mmdebstrap failed for $suite $variant ($packages)" >&2
  exit 1
fi
touch "$tmp/.complete"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"
