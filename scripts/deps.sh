#!/usr/bin/env bash
# Installs what drfs's tests and demo need on a fresh Debian/Ubuntu machine.
set -euo pipefail
need=()
for pair in fio:fio qemu-img:qemu-utils mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs rsync:rsync fusermount3:fuse3 losetup:mount; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v staticcheck >/dev/null 2>&1 && [ ! -x "$(go env GOPATH)/bin/staticcheck" ]; then
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
# Azurite, the Azure Blob emulator the azblob target's tests run against.
if ! command -v azurite-blob >/dev/null 2>&1; then
  if ! command -v npm >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null
  fi
  npm install -g --no-audit --no-fund azurite@3.37.0 >/dev/null
fi
# The libvirt drill (docs/libvirt.md): libvirt with QEMU, and the guest's
# kernel and busybox (scripts/libvirt-guest.sh). No recommends: no desktop
# bits, no firmware. The guest boots the kernel with its own initramfs, so
# the kernel's postinst makes none (INITRD=No): update-initramfs is what
# fails in some containers.
need=()
for pair in virsh:libvirt-daemon-system libvirtd:libvirt-daemon-system virtlogd:libvirt-daemon-system qemu-system-x86_64:qemu-system-x86; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
if ! ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive INITRD=No
  apt-get update -qq
  if ! apt-get install -y -qq --no-install-recommends linux-image-cloud-amd64 >/dev/null; then
    # A kernel or boot loader hook failed after the kernel and its modules
    # were unpacked: they are all the guest needs. Leave dpkg consistent if
    # it can be, and go on.
    dpkg --configure -a >/dev/null 2>&1 || true
    ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 && ls -d /lib/modules/*-cloud-amd64 >/dev/null 2>&1 || {
      echo "deps.sh: linux-image-cloud-amd64 did not install its kernel" >&2
      exit 1
    }
    echo "deps.sh: linux-image-cloud-amd64's hooks failed; its kernel and modules are in place" >&2
  fi
  unset INITRD
fi
go mod download
