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
go mod download
