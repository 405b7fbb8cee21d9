#!/usr/bin/env bash
# `make demo`: the main job of vdiskfs, step by step, saying what it does.
# Makes a qcow2, a VMDK and a raw image, mounts them as raw files, uses them with dd, fio and a
# partition file with ext4 on it (mount -o loop), unmounts, and lets qemu-img check what we wrote.
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

say "5. Use the qcow2 view as a disk: partition it, and each partition shows up as a file of its own"
echo ',,L' | sfdisk -q "$MNT/server.qcow2.raw"
ls -l "$MNT"/server.qcow2.*
mkfs.ext4 -q -F "$MNT/server.qcow2.p1.raw"
mount -o loop "$MNT/server.qcow2.p1.raw" "$WORK/ext4"
echo "written through ext4 on a partition file of a vdiskfs view of a qcow2" > "$WORK/ext4/hello.txt"
cat "$WORK/ext4/hello.txt"
umount "$WORK/ext4"   # mount -o loop detaches its loop device here
fsck.ext4 -n -f "$MNT/server.qcow2.p1.raw" >/dev/null 2>&1 && echo "fsck.ext4 -n: clean"

say "6. Unmount: pending writes are flushed, every image is closed cleanly"
$VDISKFS unmount "$MNT"
mountpoint -q "$MNT" || echo "unmounted"

say "7. The images are still qcow2 and VMDK on disk; QEMU agrees they are consistent"
qemu-img check "$IMAGES/server.qcow2"
qemu-img check "$IMAGES/desktop.vmdk"
$VDISKFS info "$IMAGES/server.qcow2"
echo
echo "Done. Everything above ran in $WORK and has been cleaned up."
