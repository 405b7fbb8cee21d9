#!/usr/bin/env bash
# `make demo`: the main job of vdiskfs, step by step, saying what it does.
# Makes a qcow2, a VMDK and a raw image, mounts them as raw files, uses them with dd, fio and a
# loop device with ext4 on it, unmounts, and lets qemu-img check what we wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
VDISKFS="node $PWD/dist/src/cli/main.js"
WORK=$(mktemp -d /tmp/vdiskfs-demo.XXXXXX)
IMAGES=$WORK/images
MNT=$WORK/mnt
mkdir -p "$IMAGES" "$MNT" "$WORK/ext4"
LOOPS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  set +e
  mountpoint -q "$WORK/ext4" && umount "$WORK/ext4"
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  mountpoint -q "$MNT" && $VDISKFS unmount "$MNT" 2>/dev/null
  mountpoint -q "$MNT" && umount -l "$MNT"
  rm -rf "$WORK"
}
trap cleanup EXIT

# Partition 1 of a disk file as a block device: losetup -P, or (where the kernel makes no
# partition nodes, as in some containers) a loop device at the partition's offset.
attach_part1() {  # sets PART; remembers every loop device in LOOPS
  local whole; whole=$(losetup -P --show -f "$1"); LOOPS=("$whole" "${LOOPS[@]}")
  for _ in $(seq 20); do [ -e "${whole}p1" ] && { PART="${whole}p1"; return; }; sleep 0.1; done
  local start size; read -r start size < <(sfdisk -d "$1" | sed -n 's/.*start= *\([0-9]*\), size= *\([0-9]*\).*/\1 \2/p' | head -1)
  PART=$(losetup --show -f -o $((start * 512)) --sizelimit $((size * 512)) "$1"); LOOPS=("$PART" "${LOOPS[@]}")
}

say "1. Make three images: a 1 GiB qcow2, a 1 GiB VMDK (both with vdiskfs create, qemu-img's options) and a 64 MiB raw file"
$VDISKFS create -f qcow2 "$IMAGES/server.qcow2" 1G
$VDISKFS create -f vmdk "$IMAGES/desktop.vmdk" 1G
truncate -s 64M "$IMAGES/scratch.img"
ls -l "$IMAGES"

say "2. Mount the folder: every image shows up as a flat raw file (returns once the mount is ready)"
$VDISKFS mount --include-raw "$IMAGES" "$MNT"
ls -l "$MNT"
echo "(sizes are virtual disk sizes; 'du' shows what the images really take:)"
du -h "$MNT"/*

say "3. dd 32 MiB of random data into the qcow2's raw view, read it back, compare"
head -c 32M /dev/urandom > "$WORK/payload"
dd if="$WORK/payload" of="$MNT/server.qcow2.raw" bs=1M seek=100 conv=notrunc,fsync status=none
cmp <(dd if="$MNT/server.qcow2.raw" bs=1M skip=100 count=32 status=none) "$WORK/payload" && echo "read back: identical"

say "4. A short fio run on the VMDK's raw view: random 4k writes, then verify every block (crc32c)"
fio --name=demo --filename="$MNT/desktop.vmdk.raw" --rw=randwrite --bs=4k --size=64M --io_size=16M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --ioengine=psync --randseed=7 --minimal \
  | awk -F';' '{printf "fio: wrote %d KiB at %d KiB/s, read back and verified %d KiB, errors: %s\n", $47, $48, $6, $5}'

say "5. Use the qcow2 view as a disk: partition it, loop device, mkfs.ext4, mount, write a file, fsck"
echo ',,L' | sfdisk -q "$MNT/server.qcow2.raw"
attach_part1 "$MNT/server.qcow2.raw"
mkfs.ext4 -q -F "$PART"
mount "$PART" "$WORK/ext4"
echo "written through ext4 on a loop device on a vdiskfs view of a qcow2" > "$WORK/ext4/hello.txt"
cat "$WORK/ext4/hello.txt"
umount "$WORK/ext4"
fsck.ext4 -n -f "$PART" >/dev/null 2>&1 && echo "fsck.ext4 -n: clean"
for l in "${LOOPS[@]}"; do losetup -d "$l"; done; LOOPS=()

say "6. Unmount: pending writes are flushed, every image is closed cleanly"
$VDISKFS unmount "$MNT"
mountpoint -q "$MNT" || echo "unmounted"

say "7. The images are still qcow2 and VMDK on disk; QEMU agrees they are consistent"
qemu-img check "$IMAGES/server.qcow2"
qemu-img check "$IMAGES/desktop.vmdk"
$VDISKFS info "$IMAGES/server.qcow2"
echo
echo "Done. Everything above ran in $WORK and has been cleaned up."
