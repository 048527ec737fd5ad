#!/usr/bin/env bash
# A demo of drfs on an embedded default: a temporary source directory with
# one VM, replicated to a local directory target every 2 seconds while its
# disk gets an ext4 file system and files through the tracking mount; then
# the VM is restored from the target and checked. Needs root and /dev/fuse.
# Everything lives under one temp dir, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DRFS=${DRFS:-./bin/drfs}
[ -x "$DRFS" ] || go build -o bin/drfs ./cmd/drfs
work=$(mktemp -d /tmp/drfs-demo.XXXXXX)
src=$work/source mnt=$work/mnt state=$work/state tgt=$work/target
mkdir -p "$src/web" "$mnt" "$work/ext4"
loop= ; pid=
cleanup() {
  set +e
  mountpoint -q "$work/ext4" && umount "$work/ext4"
  [ -n "$loop" ] && losetup -d "$loop"
  [ -n "$pid" ] && { kill -TERM "$pid"; wait "$pid"; }
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "a VM 'web' with a 256 MiB raw disk, mounted through drfs, replicating to dir://$tgt"
truncate -s 256M "$src/web/disk0.img"
"$DRFS" mount "$src" "$mnt" --state "$state" --target "dir://$tgt" --interval 2s &
pid=$!
for _ in $(seq 100); do [ -S "$state/control.sock" ] && break; sleep 0.1; done
mountpoint -q "$mnt" || { echo "mount did not come up"; exit 1; }

step "ext4 on the disk through the mount (losetup + mkfs.ext4), then files"
loop=$(losetup -f --show "$mnt/web/disk0.img")
mkfs.ext4 -q "$loop"
mount "$loop" "$work/ext4"
cp -r /usr/share/doc "$work/ext4/doc" 2>/dev/null || true
dd if=/dev/urandom of="$work/ext4/random.bin" bs=1M count=16 status=none
(cd "$work/ext4" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/files.sha256"
umount "$work/ext4"; losetup -d "$loop"; loop=
sleep 3

step "the change log and the replication while the VM runs"
"$DRFS" log "$state"
echo
"$DRFS" status "$state"

step "stop: unmount (SIGTERM) ships the last generation"
kill -TERM "$pid"; wait "$pid"; pid=

step "recovery points on the target"
"$DRFS" points --target "dir://$tgt"

step "restore the latest point and check it: e2fsck, then every file's checksum"
"$DRFS" restore --target "dir://$tgt" web --to "$work/restored"
cmp "$work/restored/disk0.img" "$src/web/disk0.img" && echo "restored disk is byte-identical to the source"
e2fsck -fn "$work/restored/disk0.img"
loop=$(losetup -f --show -r "$work/restored/disk0.img")
mount -o ro "$loop" "$work/ext4"
(cd "$work/ext4" && sha256sum --quiet -c "$work/files.sha256") && echo "all $(wc -l < "$work/files.sha256") files match"
umount "$work/ext4"; losetup -d "$loop"; loop=

step "the same VM under the agent: drfs protect (initial copy from a snapshot), status, jobs"
astate=$work/agent-state atgt=$work/agent-target sock=$work/agent.sock
"$DRFS" agent --source "$src" --mountpoint "$mnt" --state "$astate" --target "dir://$atgt" \
  --interval 2s --socket "$sock" &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
"$DRFS" protect web --socket "$sock" --wait
dd if=/dev/urandom of="$mnt/web/disk0.img" bs=4k count=256 seek=1000 conv=notrunc,fsync status=none
sleep 3
"$DRFS" status --socket "$sock"
echo
"$DRFS" jobs --socket "$sock"

step "planned failover: writes held, last generation shipped and checked, no data lost"
"$DRFS" failover web --type planned --to "$work/failover" --socket "$sock"
cmp "$work/failover/disk0.img" "$src/web/disk0.img" && echo "failed-over disk is byte-identical to the source"
e2fsck -fn "$work/failover/disk0.img" >/dev/null && echo "e2fsck: the failed-over file system is clean"
"$DRFS" commit web --socket "$sock"
kill -TERM "$pid"; wait "$pid"; pid=
step "done"
