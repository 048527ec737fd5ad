#!/usr/bin/env bash
# Builds libfuse's reference server passthrough_hp (example/passthrough_hp.cc)
# from Debian's fuse3 source package, against the machine's libfuse3, for
# the passthrough_hp target of "drfs bench mount" (docs/benchmarks.md).
#
#   scripts/passthrough_hp.sh [DIR]   # installs DIR/passthrough_hp (default /usr/local/bin)
#
# Needs root (apt-get) on Debian or Ubuntu. The source package comes through
# a private apt source list (the machine's own archives, as deb-src) in a
# work directory that is removed at the end: the machine's apt
# configuration is left as it was. The source is the version of the
# installed libfuse3-dev, so the example builds against the library it was
# written for.
set -euo pipefail

dest=${1:-/usr/local/bin}

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in libfuse3-dev g++ pkg-config dpkg-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
version=$(dpkg-query -W -f='${Version}' libfuse3-dev)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial"
: >"$work/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] && sed -n 's/^deb\s/deb-src /p' "$f" >>"$work/sources.list"
done
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && sed 's/^Types:.*/Types: deb-src/' "$f" >"$work/parts/$(basename "$f")"
done
apt=(apt-get -qq -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts="$work/parts"
  -o Dir::State::Lists="$work/lists")
# An archive without sources fails its part of the update; apt-get source
# says so if none has fuse3.
"${apt[@]}" update || true
(cd "$work" && "${apt[@]}" source "fuse3=$version" >/dev/null)

src=$(find "$work" -path '*/example/passthrough_hp.cc' | head -n 1)
if [ -z "$src" ]; then
  echo "passthrough_hp.sh: fuse3 $version has no example/passthrough_hp.cc" >&2
  exit 1
fi
# libfuse before 3.17 hands the daemon write data right after the request
# header, not on a page boundary, and passthrough_hp opens the backing file
# with the client's flags: every O_DIRECT write then fails with EINVAL on
# ext4 (libfuse 3.17 aligns write buffers to pages). Open the backing file
# without O_DIRECT, as fuse-overlayfs and bindfs do: the client's O_DIRECT
# still makes the kernel send every request to the daemon, which reads and
# writes through the host page cache, as drfs does.
sed -i '/fi->flags/s/~O_NOFOLLOW\b/~(O_NOFOLLOW | O_DIRECT)/' "$src"
if [ "$(grep -c 'O_NOFOLLOW | O_DIRECT' "$src")" != 2 ]; then
  echo "passthrough_hp.sh: $src does not open files as libfuse 3.14 does: adapt the O_DIRECT patch" >&2
  exit 1
fi
mkdir -p "$dest"
# shellcheck disable=SC2046 # pkg-config's flags are words
g++ -std=c++17 -O2 -o "$dest/passthrough_hp" "$src" $(pkg-config --cflags --libs fuse3) -pthread
echo "passthrough_hp (libfuse $version): $dest/passthrough_hp"
