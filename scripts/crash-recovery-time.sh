#!/bin/sh
# crash-recovery-time.sh: how long a drfs mount takes to protect its disks
# again after a kill -9, for a source with a large sparse disk.
#
# It makes a sparse disk of SIZE in DIR/src/vm1, mounts it with drfs
# replicating to a directory target every INTERVAL, writes WRITE of random
# 1 MiB blocks into it through the mount with fio (O_DIRECT, RATE), kills
# drfs with SIGKILL while fio still writes, and starts it again. It prints
# how long the new mount took to be mounted, what it recovered, and how
# long until its first recovery point. Needs root, /dev/fuse and fio.
#
# usage: crash-recovery-time.sh DRFS DIR [SIZE [WRITE [RATE [INTERVAL]]]]
#   defaults: SIZE 1T, WRITE 20g, RATE 250m (per second), INTERVAL 5s
set -eu
drfs=$1 dir=$2 size=${3:-1T} write=${4:-20g} rate=${5:-250m} interval=${6:-5s}
mkdir -p "$dir/src/vm1" "$dir/mnt"
truncate -s "$size" "$dir/src/vm1/disk.img"

mount() {
	"$drfs" mount "$dir/src" "$dir/mnt" --state "$dir/state" --target "dir://$dir/target" \
		--interval "$interval" --resync-window always 2>>"$dir/drfs.log" &
	pid=$!
	until mountpoint -q "$dir/mnt"; do sleep 0.01; done
}

mount
fio --name=w --filename="$dir/mnt/vm1/disk.img" --rw=randwrite --bs=1M --direct=1 --ioengine=libaio \
	--iodepth=4 --size="$size" --io_size="$write" --rate="$rate" --output="$dir/fio.log" &
fio=$!
# Kill when about 97% is written.
bytes=$(numfmt --from=iec "$(echo "$write" | tr a-z A-Z)")
per=$(numfmt --from=iec "$(echo "$rate" | tr a-z A-Z)")
sleep $((bytes * 97 / 100 / per))
kill -9 "$pid"
wait "$fio" || true
umount -l "$dir/mnt"
echo "killed after $(du -sh --apparent-size "$dir/src/vm1/disk.img" | cut -f1) apparent, $(du -sh "$dir/src/vm1/disk.img" | cut -f1) allocated"

: >"$dir/drfs.log"
start=$(date +%s.%N)
mount
mounted=$(date +%s.%N)
until grep -q "recovery point" "$dir/drfs.log"; do sleep 0.05; done
shipped=$(date +%s.%N)
grep -E "in-flight table|resync" "$dir/drfs.log" || true
echo "mounted again in $(echo "$mounted - $start" | bc) s; first recovery point after $(echo "$shipped - $start" | bc) s"
kill -TERM "$pid"
wait "$pid" || true
