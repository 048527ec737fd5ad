#!/bin/sh
# Builds the guest of the libvirt drill (docs/libvirt.md) into OUTDIR:
#
#   vmlinuz      the kernel of Debian's linux-image-cloud-amd64
#   initrd.img   a busybox initramfs with that kernel's virtio modules and an
#                /init that writes or checks the guest's two disks
#   data.img     a 64 MiB raw disk with an ext4 file system
#   logs.qcow2   a 64 MiB qcow2 disk with an ext4 file system
#
# The guest boots directly (no boot loader) and reads its mode from the
# kernel command line: drfs.mode=write fills both disks' file systems with
# files of random data and a MANIFEST of their sha256 sums;
# drfs.mode=check mounts them read-only, checks the manifests and prints
# DRFS-CHECK OK or DRFS-CHECK FAILED on the console (ttyS0). Both power
# off when done.
#
# Needs linux-image-cloud-amd64, busybox-static, e2fsprogs and qemu-utils
# (scripts/deps.sh installs them). Running it again rebuilds OUTDIR's files.
set -eu
PATH=$PATH:/usr/sbin:/sbin # mkfs.ext4

out=${1:?usage: libvirt-guest.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
if [ -z "$kernel" ]; then
	echo "libvirt-guest.sh: no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64" >&2
	exit 1
fi
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! "$busybox" --list | grep -qx sha256sum; then
	echo "libvirt-guest.sh: no usable busybox: install busybox-static" >&2
	exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
	echo "libvirt-guest.sh: $busybox is dynamically linked: install busybox-static" >&2
	exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The initramfs: busybox, the modules virtio_blk needs, in load order, and /init.
root=$work/root
mkdir -p "$root/bin" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev" "$root/mnt"
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"
: >"$root/lib/modules/order"
for m in $modules; do
	# Found by name (modules.dep may be missing where the kernel's postinst
	# did not run); a module built into the kernel has no file, and needs
	# no loading.
	path=$(find "$moddir/kernel" -name "$m.ko*" | head -n 1)
	[ -n "$path" ] || continue
	case $path in
	*.ko) cp "$path" "$root/lib/modules/$m.ko" ;;
	*.ko.xz) "$busybox" xzcat "$path" >"$root/lib/modules/$m.ko" ;;
	*.ko.gz) "$busybox" zcat "$path" >"$root/lib/modules/$m.ko" ;;
	*) echo "libvirt-guest.sh: cannot unpack $path" >&2; exit 1 ;;
	esac
	echo "$m" >>"$root/lib/modules/order"
done
grep -qx virtio_blk "$root/lib/modules/order" || grep -q '^CONFIG_VIRTIO_BLK=y' "/boot/config-$kver" || {
	echo "libvirt-guest.sh: $kver has no virtio_blk module" >&2
	exit 1
}
if grep -q '^CONFIG_EXT4_FS=m' "/boot/config-$kver"; then
	echo "libvirt-guest.sh: $kver builds ext4 as a module; the guest needs it built in" >&2
	exit 1
fi

cat >"$root/init" <<'EOF'
#!/bin/sh
# The drill's guest: drfs.mode=write or drfs.mode=check on the kernel
# command line, then power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1

for m in $(cat /lib/modules/order); do
	insmod /lib/modules/$m.ko || echo "DRFS: insmod $m failed"
done
mode=$(sed -n 's/.*drfs\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
echo "DRFS: mode $mode"

# The two disks, as the kernel names them.
i=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
	i=$((i + 1))
	if [ $i -gt 300 ]; then
		echo "DRFS: no /dev/vda and /dev/vdb after 30s"
		ls /dev
		[ "$mode" = check ] && echo "DRFS-CHECK FAILED"
		poweroff -f
	fi
	sleep 0.1
done

fail=0
for d in vda vdb; do
	mkdir -p /mnt/$d
	case $mode in
	write)
		if ! mount -t ext4 /dev/$d /mnt/$d; then
			echo "DRFS: mount /dev/$d failed"
			fail=1
			continue
		fi
		mkdir -p /mnt/$d/files
		n=1
		while [ $n -le 12 ]; do
			# 4 KiB to about 1.2 MiB, not a multiple of the block size.
			head -c $(((n * 97 % 300 + 1) * 4096 + n * 13)) /dev/urandom >/mnt/$d/files/f$n
			n=$((n + 1))
		done
		(cd /mnt/$d && sha256sum files/* >MANIFEST)
		echo "DRFS: wrote $(wc -l </mnt/$d/MANIFEST) files on $d"
		umount /mnt/$d || fail=1
		;;
	check)
		if ! mount -t ext4 -o ro /dev/$d /mnt/$d; then
			echo "DRFS: mount /dev/$d failed"
			echo "DRFS-CHECK $d FAILED"
			fail=1
			continue
		fi
		if [ -s /mnt/$d/MANIFEST ] && (cd /mnt/$d && sha256sum -c MANIFEST); then
			echo "DRFS-CHECK $d OK ($(wc -l </mnt/$d/MANIFEST) files)"
		else
			echo "DRFS-CHECK $d FAILED"
			fail=1
		fi
		umount /mnt/$d
		;;
	*)
		echo "DRFS: unknown drfs.mode '$mode'"
		fail=1
		;;
	esac
done
sync
case $mode in
write) [ $fail = 0 ] && echo "DRFS-WRITE OK" || echo "DRFS-WRITE FAILED" ;;
check) [ $fail = 0 ] && echo "DRFS-CHECK OK" || echo "DRFS-CHECK FAILED" ;;
esac
poweroff -f
EOF
chmod 755 "$root/init"
(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null | "$busybox" gzip -9) >"$work/initrd.img"

# The disks: ext4 made on the host, so that the guest only mounts them.
truncate -s 64M "$work/data.img"
mkfs.ext4 -q -F -L data "$work/data.img"
truncate -s 64M "$work/logs.raw"
mkfs.ext4 -q -F -L logs "$work/logs.raw"
qemu-img convert -f raw -O qcow2 "$work/logs.raw" "$work/logs.qcow2"

cp "$kernel" "$work/vmlinuz"
for f in vmlinuz initrd.img data.img logs.qcow2; do
	chmod 644 "$work/$f"
	mv -f "$work/$f" "$out/$f"
done
echo "guest of $kver in $out"
