#!/usr/bin/env bash
# A demo of drfs on an embedded default: a temporary directory with one VM,
# whose disk gets an ext4 file system and files through the tracking mount.
# Needs root and /dev/fuse. Everything lives under one temp dir, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DRFS=${DRFS:-./bin/drfs}
[ -x "$DRFS" ] || go build -o bin/drfs ./cmd/drfs
work=$(mktemp -d /tmp/drfs-demo.XXXXXX)
src=$work/source mnt=$work/mnt state=$work/state
mkdir -p "$src/web" "$mnt"
loop= ; pid=
cleanup() {
  set +e
  [ -n "$loop" ] && { umount "$work/ext4" 2>/dev/null; losetup -d "$loop"; }
  [ -n "$pid" ] && { kill -TERM "$pid"; wait "$pid"; }
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "a VM 'web' with one 256 MiB raw disk"
truncate -s 256M "$src/web/disk0.img"
"$DRFS" mount "$src" "$mnt" --state "$state" &
pid=$!
for _ in $(seq 50); do mountpoint -q "$mnt" && break; sleep 0.1; done
mountpoint -q "$mnt" || { echo "mount did not come up"; exit 1; }

step "ext4 on the disk through the mount (losetup + mkfs.ext4), then some files"
loop=$(losetup -f --show "$mnt/web/disk0.img")
mkfs.ext4 -q "$loop"
mkdir -p "$work/ext4" && mount "$loop" "$work/ext4"
cp -r /usr/share/doc/bash "$work/ext4/" 2>/dev/null || seq 100000 > "$work/ext4/numbers"
sync
"$DRFS" rotate "$state" web
dd if=/dev/urandom of="$work/ext4/random.bin" bs=1M count=8 status=none
umount "$work/ext4"; losetup -d "$loop"; loop=

step "the change log (generation 1 frozen, generation 2 active)"
"$DRFS" log "$state"

step "unmount (SIGTERM) and read the log offline"
kill -TERM "$pid"; wait "$pid"; pid=
"$DRFS" log "$state"
