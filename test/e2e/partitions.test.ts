import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { corpusDir } from '../helpers/corpus';
import { mountFixture, type Mounted } from '../helpers/mount';
import { qemuImg } from '../helpers/qemu';

/**
 * Partitions as files: sfdisk on a disk view makes `disk.p<N>.raw` files appear beside it, each
 * a window on the disk that mkfs, mount -o loop and fsck use like a partition device.
 */
const fx = mountFixture();

/** What sfdisk says of the disk view: Linux partition number → byte offset and size (no extended containers). */
function sfdiskParts(view: string): Map<number, { offset: number; size: number }> {
  const j = JSON.parse(execFileSync('sfdisk', ['--json', view], { encoding: 'utf8' })) as {
    partitiontable: { partitions: Array<{ node: string; start: number; size: number; type: string }> };
  };
  const out = new Map<number, { offset: number; size: number }>();
  for (const p of j.partitiontable.partitions) {
    if (['5', 'f', '85'].includes(p.type)) continue;
    out.set(Number(/(\d+)$/.exec(p.node)![1]), { offset: p.start * 512, size: p.size * 512 });
  }
  return out;
}

function hashRange(file: string, offset: number, length: number): string {
  const fd = fs.openSync(file, 'r');
  try {
    const h = createHash('sha256');
    const buf = Buffer.alloc(1 << 20);
    for (let done = 0; done < length;) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, length - done), offset + done);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      done += n;
    }
    return h.digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

/** The partition files shown for a disk view, by number, with their sizes. */
function partitionFiles(m: Mounted, disk: string): Map<number, number> {
  const base = disk.replace(/\.raw$/, '');
  const out = new Map<number, number>();
  for (const name of fs.readdirSync(m.mnt)) {
    const hit = new RegExp(`^${base.replace(/[.]/g, '\\.')}\\.p(\\d+)\\.raw$`).exec(name);
    if (hit) out.set(Number(hit[1]), fs.statSync(path.join(m.mnt, name)).size);
  }
  return out;
}

/** Waits until the listing shows what the table says (the kernel may keep a listing for a moment). */
async function expectPartitions(m: Mounted, disk: string, want: Map<number, { offset: number; size: number }>): Promise<void> {
  const expected = [...want].map(([n, p]) => [n, p.size]).sort();
  let got: Array<number[]> = [];
  for (let i = 0; i < 40; i++) {
    got = [...partitionFiles(m, disk)].sort();
    if (JSON.stringify(got) === JSON.stringify(expected)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(got).toEqual(expected);
}

/** mkfs.ext4 on a partition file, mount -o loop, write a file, unmount, fsck -fn clean. */
async function ext4RoundTrip(part: string, dir: string): Promise<void> {
  execFileSync('mkfs.ext4', ['-q', '-F', part]);
  fs.mkdirSync(dir);
  execFileSync('mount', ['-o', 'loop', part, dir]);
  try {
    fs.writeFileSync(path.join(dir, 'hello.txt'), 'written through a partition file\n'.repeat(1000));
  } finally {
    execFileSync('umount', [dir]);
  }
  execFileSync('fsck.ext4', ['-fn', part], { stdio: 'pipe' });
}

describe('partitions as files', () => {
  it('MBR with a logical partition on qcow2: files appear, mkfs + mount -o loop + fsck clean, the file is the disk at its offset', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', path.join(fx.images, 'disk.qcow2'), '256M']);
    const m = await fx.mount();
    const view = path.join(m.mnt, 'disk.qcow2.raw');
    expect(partitionFiles(m, 'disk.qcow2.raw').size).toBe(0);
    execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', view], { input: 'label: dos\n,64M,L\n,,E\n,64M,L\n,,L\n' });
    const want = sfdiskParts(view);
    expect([...want.keys()]).toEqual([1, 5, 6]);
    await expectPartitions(m, 'disk.qcow2.raw', want);

    const p5 = path.join(m.mnt, 'disk.qcow2.p5.raw');
    await ext4RoundTrip(p5, path.join(fx.dir, 'p5'));
    const { offset, size } = want.get(5)!;
    expect(hashRange(p5, 0, size)).toBe(hashRange(view, offset, size));
    // A write past the partition's end does not spill into the next one.
    const fd = fs.openSync(p5, 'r+');
    try {
      expect(() => fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, size)).toThrow(/ENOSPC|EFBIG|EINVAL/);
    } finally {
      fs.closeSync(fd);
    }
    expect(await m.unmount()).toBe(0);
    const check = execFileSync('qemu-img', ['check', path.join(fx.images, 'disk.qcow2')], { encoding: 'utf8' });
    expect(check).toMatch(/No errors/);
  });

  it.each([[[]], [['--writeback-cache']]])('GPT on a VMDK view, and the list follows a new table (%j)', async (args: string[]) => {
    qemuImg(['create', '-q', '-f', 'vmdk', path.join(fx.images, 'disk.vmdk'), '128M']);
    const m = await fx.mount(args);
    const view = path.join(m.mnt, 'disk.vmdk.raw');
    execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', view], {
      input: 'label: gpt\nsize=16M, type=L\nsize=32M, type=L\ntype=L\n',
    });
    await expectPartitions(m, 'disk.vmdk.raw', sfdiskParts(view));
    await ext4RoundTrip(path.join(m.mnt, 'disk.vmdk.p3.raw'), path.join(fx.dir, `p3${args.length}`));
    // Data written through p2 is the disk's at p2's offset.
    const p2 = path.join(m.mnt, 'disk.vmdk.p2.raw');
    const data = Buffer.alloc(1 << 20, 0x5a);
    fs.writeFileSync(p2, data, { flag: 'r+' });
    const { offset } = sfdiskParts(view).get(2)!;
    expect(hashRange(view, offset, data.length)).toBe(createHash('sha256').update(data).digest('hex'));
    // A new table with one partition: p2 and p3 go.
    execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', '--wipe', 'never', view], { input: 'label: dos\n,,L\n' });
    await expectPartitions(m, 'disk.vmdk.raw', sfdiskParts(view));
    // The kernel may keep p2's entry for its entry timeout (1 s) after the last lookup of it.
    for (let i = 0; i < 30 && fs.existsSync(p2); i++) await new Promise((r) => setTimeout(r, 100));
    expect(fs.existsSync(p2)).toBe(false);
    expect(await m.unmount()).toBe(0);
  });

  it('a damaged table shows no partition files and one log line; the disk view stays', async () => {
    const img = path.join(fx.images, 'bad.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', img, '64M']);
    const m = await fx.mount();
    const view = path.join(m.mnt, 'bad.qcow2.raw');
    execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', view], { input: 'label: dos\n,16M,L\n,16M,L\n' });
    // Make partition 2 start inside partition 1.
    const fd = fs.openSync(view, 'r+');
    const mbr = Buffer.alloc(512);
    fs.readSync(fd, mbr, 0, 512, 0);
    mbr.writeUInt32LE(mbr.readUInt32LE(446 + 8) + 8, 446 + 16 + 8);
    fs.writeSync(fd, mbr, 0, 512, 0);
    fs.closeSync(fd);
    for (let i = 0; i < 40 && partitionFiles(m, 'bad.qcow2.raw').size > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(partitionFiles(m, 'bad.qcow2.raw').size).toBe(0);
    expect(fs.existsSync(view)).toBe(true);
    expect(
      await m.waitForLog(/no partition files for .*bad\.qcow2: the partition table is damaged \(partitions 1 and 2 overlap\)/),
    ).toMatch(/overlap/);
  });

  it('--no-partitions shows the disk only', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', path.join(fx.images, 'disk.qcow2'), '64M']);
    let m = await fx.mount();
    execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', path.join(m.mnt, 'disk.qcow2.raw')], { input: 'label: dos\n,,L\n' });
    await expectPartitions(m, 'disk.qcow2.raw', new Map([[1, { offset: 1 << 20, size: 63 << 20 }]]));
    expect(await m.unmount()).toBe(0);
    m = await fx.mount(['--no-partitions']);
    expect(fs.readdirSync(m.mnt)).toEqual(['disk.qcow2.raw']);
  });

  it('images made by other tools show their partitions (corpus)', async () => {
    const corpus = corpusDir()!;
    const src = path.join(corpus, 'vmdk-rs/monolithicSparse.vmdk');
    fs.copyFileSync(src, path.join(fx.images, 'rs.vmdk'));
    // An NTFS volume without a partition table: its boot sector must not be taken for an MBR.
    fs.copyFileSync(path.join(corpus, 'dfvfs/windows_volume.qcow2'), path.join(fx.images, 'vol.qcow2'));
    const m = await fx.mount(['--read-only']);
    const view = path.join(m.mnt, 'rs.vmdk.raw');
    const want = sfdiskParts(view);
    await expectPartitions(m, 'rs.vmdk.raw', want);
    const p1 = path.join(m.mnt, 'rs.vmdk.p1.raw');
    expect(hashRange(p1, 0, want.get(1)!.size)).toBe(hashRange(view, want.get(1)!.offset, want.get(1)!.size));
    expect(partitionFiles(m, 'vol.qcow2.raw').size).toBe(0);
    expect(fs.statSync(p1).mode & 0o777).toBe(0o444);
  });
});
