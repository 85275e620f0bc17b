#!/usr/bin/env bash
# Checks the README's test command on a fresh machine: a clean Debian
# bookworm root file system (mmdebstrap, variant minbase: less than any real
# install has), a clone of this repository's committed HEAD, then
# `bash scripts/test.sh` inside it (chroot), exactly as a new user runs it.
#
#   bash scripts/fresh-machine-check.sh [LOG_FILE]
#
# Takes as long as a first install, build and test run (tens of minutes on
# two cores), so it is not part of every CI run: run it before changing what
# scripts/install-deps.sh installs or how the build is set up, and whenever
# an install step changes. Needs root and Debian's mirror (exit 77 without
# them). Exits with scripts/test.sh's exit code; the whole output goes to
# LOG_FILE (default /tmp/recstream-fresh-machine.log) and the last lines are
# shown.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
log=${1:-/tmp/recstream-fresh-machine.log}

template=$(bash scripts/rootfs.sh minbase -)
work=$(mktemp -d /tmp/recstream-fresh.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root=$work/root
cp -a "$template" "$root"
git clone -q "$src" "$root/src/recstream"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
echo "fresh-machine-check: $(git -C "$src" rev-parse --short HEAD) in a clean bookworm ($root); log: $log"

start=$(date +%s)
set +e
# A private mount namespace: /proc, /sys and /dev go away with it.
unshare --mount bash -c '
  set -e
  root=$1
  # The root a mount point of its own, as on a real machine (unshare --mount
  # inside, used by the image test, needs one).
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs tmpfs "$root/dev/shm"
  exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 CI="${CI:-}" bash -c "cd /src/recstream && bash scripts/test.sh"
' _ "$root" >"$log" 2>&1
rc=$?
set -e
took=$(($(date +%s) - start))
tail -n 25 "$log"
echo "fresh-machine-check: scripts/test.sh exited $rc after ${took} s in a clean bookworm"
exit $rc
