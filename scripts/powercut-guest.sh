#!/bin/sh
# Builds the guest of the power-cut test (cmd/drfs TestPowerCut) into
# OUTDIR:
#
#   vmlinuz      the kernel of Debian's linux-image-cloud-amd64
#   initrd.img   a busybox initramfs with that kernel's virtio and fuse
#                modules, the drfs binary DRFS (static: CGO_ENABLED=0) and
#                an /init that runs one cycle of the test
#   data.img     a 256 MiB raw disk with an empty ext4 file system
#
# A cycle (drfs.mode=cycle on the kernel command line): mount data.img's
# file system; unless it is the first boot, recover what the last one left
# (it was killed: a power cut for its kernel), with drfs mount started until
# it made a point with nothing flagged, then drfs verify of the newest point
# against the source; then start drfs mount and a writer of random O_DIRECT
# writes with fsyncs, and say DRFS-WRITING: the test kills QEMU at a random
# moment from then on. drfs.mode=final recovers and verifies, then powers
# off. The console (ttyS0) carries lines the test reads:
#
#   DRFS-WRITING N          cycle N writes
#   DRFS-STAT LINE          a line of drfs mount's log about the recovery
#   DRFS-VERIFY OK|FAILED   the newest point against the source
#   DRFS-FAILED WHY         the cycle could not run
#
# Needs linux-image-cloud-amd64, busybox-static and e2fsprogs
# (scripts/deps.sh installs them). Running it again rebuilds OUTDIR's files.
set -eu
PATH=$PATH:/usr/sbin:/sbin # mkfs.ext4

out=${1:?usage: powercut-guest.sh OUTDIR DRFS}
drfs=${2:?usage: powercut-guest.sh OUTDIR DRFS}
mkdir -p "$out"
out=$(cd "$out" && pwd)

kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
if [ -z "$kernel" ]; then
	echo "powercut-guest.sh: no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64" >&2
	exit 1
fi
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
	echo "powercut-guest.sh: no static busybox: install busybox-static" >&2
	exit 1
fi
if ldd "$drfs" >/dev/null 2>&1; then
	echo "powercut-guest.sh: $drfs is dynamically linked: build it with CGO_ENABLED=0" >&2
	exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev" "$root/data" "$root/mnt/drfs" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$drfs" "$root/bin/drfs"
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk fuse"
: >"$root/lib/modules/order"
for m in $modules; do
	# Found by name; a module built into the kernel has no file.
	path=$(find "$moddir/kernel" -name "$m.ko*" | head -n 1)
	[ -n "$path" ] || continue
	case $path in
	*.ko) cp "$path" "$root/lib/modules/$m.ko" ;;
	*.ko.xz) "$busybox" xzcat "$path" >"$root/lib/modules/$m.ko" ;;
	*.ko.gz) "$busybox" zcat "$path" >"$root/lib/modules/$m.ko" ;;
	*) echo "powercut-guest.sh: cannot unpack $path" >&2; exit 1 ;;
	esac
	echo "$m" >>"$root/lib/modules/order"
done
if grep -q '^CONFIG_EXT4_FS=m' "/boot/config-$kver"; then
	echo "powercut-guest.sh: $kver builds ext4 as a module; the guest needs it built in" >&2
	exit 1
fi

cat >"$root/init" <<'EOF'
#!/bin/sh
# One cycle of the power-cut test (see scripts/powercut-guest.sh).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1

fail() {
	echo "DRFS-FAILED $*"
	sync
	poweroff -f
}

for m in $(cat /lib/modules/order); do
	insmod /lib/modules/$m.ko || echo "DRFS: insmod $m failed"
done
mode=$(sed -n 's/.*drfs\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
i=0
while [ ! -b /dev/vda ]; do
	i=$((i + 1))
	[ $i -gt 300 ] && fail "no /dev/vda after 30s"
	sleep 0.1
done
mount -t ext4 /dev/vda /data || fail "mount /dev/vda"

args="/data/src /mnt/drfs --state /data/state --target dir:///data/target --interval 2s --resync-window never --activity-extent 1MiB"
n=$(cat /data/cycle 2>/dev/null || echo 0)
n=$((n + 1))
echo $n >/data/cycle
mkdir -p /data/logs
log=/data/logs/mount-$n.log
sync

# recover starts drfs mount until it made a point with nothing flagged
# (a point from the log may come before the resync's), then verifies the
# newest point.
recover() {
	tries=0
	while :; do
		tries=$((tries + 1))
		start=$(cat $log 2>/dev/null | wc -l)
		drfs mount $args >>$log 2>&1 &
		pid=$!
		i=0
		while [ $i -lt 1200 ] && kill -0 $pid 2>/dev/null; do
			sleep 0.1
			i=$((i + 1))
			tail -n +$((start + 1)) $log | grep -q "recovery point" && break
		done
		kill -TERM $pid 2>/dev/null
		wait $pid
		drfs log /data/state >/tmp/status 2>&1
		if ! grep -q "REQUIRED\|recovering " /tmp/status; then
			break
		fi
		if [ $tries -ge 5 ]; then
			cat /tmp/status
			fail "disk still flagged after $tries starts"
		fi
	done
	grep -h "host crashed\|resync against point\|dirty shutdown\|resynchronization required\|initial replication" $log | sed 's/^/DRFS-STAT /'
	if drfs verify --target dir:///data/target --source /data/src vm1 >/tmp/verify 2>&1; then
		echo "DRFS-VERIFY OK"
	else
		cat /tmp/verify
		echo "DRFS-VERIFY FAILED"
	fi
}

if [ -e /data/src/vm1/disk.img ]; then
	recover
else
	mkdir -p /data/src/vm1 /data/target
	truncate -s 64M /data/src/vm1/disk.img
	sync
fi
if [ "$mode" = final ]; then
	sync
	umount /data
	poweroff -f
fi

drfs mount $args >>$log 2>&1 &
i=0
while [ ! -e /mnt/drfs/vm1/disk.img ]; do
	i=$((i + 1))
	[ $i -gt 600 ] && fail "drfs mount did not come up"
	sleep 0.1
done
echo "DRFS-WRITING $n"
# Random O_DIRECT writes of 4 to 32 KiB in a 16 MiB region.
region=$(((RANDOM % 48) * 256))
while :; do
	# Half of them synced: the others may be lost with the page cache.
	conv=notrunc
	[ $((RANDOM % 2)) = 0 ] && conv=notrunc,fsync
	dd if=/dev/urandom of=/mnt/drfs/vm1/disk.img bs=4096 count=$((1 + RANDOM % 8)) seek=$((region + RANDOM % 4096)) conv=$conv oflag=direct 2>/dev/null || sleep 0.1
done
EOF
chmod 755 "$root/init"
(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null | "$busybox" gzip -6) >"$work/initrd.img"

truncate -s 256M "$work/data.img"
mkfs.ext4 -q -F -L data "$work/data.img"

cp "$kernel" "$work/vmlinuz"
for f in vmlinuz initrd.img data.img; do
	chmod 644 "$work/$f"
	mv -f "$work/$f" "$out/$f"
done
echo "power-cut guest of $kver in $out"
