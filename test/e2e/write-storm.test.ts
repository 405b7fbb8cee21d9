/**
 * Seeded random write storms through a real mount, for every writable qcow2 and VMDK variant:
 * unaligned, cross-cluster, all-zero buffers, 1 byte to 2 MiB, several writers at once, mirrored
 * to a plain file. After unmount, `qemu-img check` must be clean and `qemu-img compare` must
 * equal the mirror. Reproduce one with its seed: STORM_SEED=<n>.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { mountFixture } from '../helpers/mount';
import { qemuCheck, qemuCompare, rng } from '../helpers/qemu';

const SIZE = 48 << 20;
const BASE_SEED = Number(process.env.STORM_SEED ?? 20261121);

interface Variant {
  name: string;
  file: string;
  format: 'qcow2' | 'vmdk';
  /** Makes the image (and whatever it needs) inside `dir`. */
  make(dir: string): void;
  mountArgs?: string[];
}

const img = (args: string[]) => execFileSync('qemu-img', args, { stdio: 'pipe' });
const io = (file: string, cmds: string[], fmt?: string) =>
  execFileSync('qemu-io', [...(fmt ? ['-f', fmt] : []), ...cmds.flatMap((c) => ['-c', c]), file], { stdio: 'pipe' });

const qcow2 = (name: string, opts: string): Variant => ({
  name,
  file: `${name}.qcow2`,
  format: 'qcow2',
  make: (d) => img(['create', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), path.join(d, `${name}.qcow2`), String(SIZE)]),
});
const vmdk = (name: string, opts: string, mountArgs: string[] = []): Variant => ({
  name,
  file: `${name}.vmdk`,
  format: 'vmdk',
  mountArgs,
  make: (d) => img(['create', '-f', 'vmdk', ...(opts ? ['-o', opts] : []), path.join(d, `${name}.vmdk`), String(SIZE)]),
});

const variants: Variant[] = [
  qcow2('qcow2-default', ''),
  qcow2('qcow2-v2', 'compat=0.10'),
  qcow2('qcow2-c512', 'cluster_size=512'),
  qcow2('qcow2-c2m', 'cluster_size=2M'),
  qcow2('qcow2-refcount1', 'refcount_bits=1'),
  qcow2('qcow2-refcount64', 'refcount_bits=64'),
  qcow2('qcow2-lazy', 'lazy_refcounts=on'),
  qcow2('qcow2-extl2', 'extended_l2=on,cluster_size=128k'),
  {
    name: 'qcow2-backing-chain',
    file: 'top.qcow2',
    format: 'qcow2',
    make: (d) => {
      img(['create', '-f', 'raw', path.join(d, 'base.raw'), String(SIZE)]);
      io(path.join(d, 'base.raw'), ['write -P 0x11 0 8M', 'write -P 0x12 20M 3M'], 'raw');
      img(['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', path.join(d, 'mid.qcow2')]);
      io(path.join(d, 'mid.qcow2'), ['write -P 0x21 4M 8M', 'write -z 22M 1M']);
      img(['create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', path.join(d, 'top.qcow2')]);
      // The middle and base images are backing files of another: the mount shows them read-only.
    },
  },
  {
    name: 'qcow2-snapshot',
    file: 'snap.qcow2',
    format: 'qcow2',
    make: (d) => {
      const f = path.join(d, 'snap.qcow2');
      img(['create', '-f', 'qcow2', f, String(SIZE)]);
      io(f, ['write -P 0x31 0 16M']);
      img(['snapshot', '-c', 'before', f]);
    },
  },
  {
    name: 'qcow2-compressed',
    file: 'comp.qcow2',
    format: 'qcow2',
    make: (d) => {
      img(['create', '-f', 'raw', path.join(d, 'src.raw'), String(SIZE)]);
      io(path.join(d, 'src.raw'), ['write -P 0x41 0 12M', 'write -P 0x42 30M 2M'], 'raw');
      img(['convert', '-c', '-O', 'qcow2', path.join(d, 'src.raw'), path.join(d, 'comp.qcow2')]);
      fs.rmSync(path.join(d, 'src.raw'));
    },
  },
  vmdk('vmdk-sparse', ''),
  vmdk('vmdk-sparse-single-alloc', '', ['--no-multi-alloc']),
  vmdk('vmdk-zeroed-grain', 'zeroed_grain=on'),
  vmdk('vmdk-flat', 'subformat=monolithicFlat'),
  vmdk('vmdk-split-sparse', 'subformat=twoGbMaxExtentSparse'),
  {
    name: 'vmdk-delta',
    file: 'child.vmdk',
    format: 'vmdk',
    make: (d) => {
      const parent = path.join(d, 'parent.vmdk');
      img(['create', '-f', 'vmdk', parent, String(SIZE)]);
      io(parent, ['write -P 0x51 0 10M', 'write -P 0x52 40M 1M']);
      img(['create', '-f', 'vmdk', '-b', 'parent.vmdk', '-F', 'vmdk', path.join(d, 'child.vmdk')]);
    },
  },
];

const fx = mountFixture();

/** One writer's ops: mostly in its own slice (so concurrent writers never overlap), sometimes anywhere. */
function ops(seed: number, lo: number, hi: number, count: number): Array<{ off: number; data: Buffer }> {
  const r = rng(seed);
  const out: Array<{ off: number; data: Buffer }> = [];
  for (let i = 0; i < count; i++) {
    const kind = r();
    const len = kind < 0.3 ? 1 + Math.floor(r() * 4096) : kind < 0.85 ? 1 + Math.floor(r() * 200_000) : 1 + Math.floor(r() * (2 << 20));
    const span = Math.min(len, hi - lo);
    const off = lo + Math.floor(r() * (hi - lo - span + 1));
    const data = Buffer.alloc(span);
    if (r() < 0.2)
      data.fill(0); // all-zero writes: zero clusters / grains where the format can
    else for (let j = 0; j < span; j += 4096) data.fill(Math.floor(r() * 256), j, Math.min(span, j + 4096));
    out.push({ off, data });
  }
  return out;
}

async function storm(view: string, mirror: string, seed: number): Promise<void> {
  const fd = await fs.promises.open(view, 'r+');
  const mfd = fs.openSync(mirror, 'r+');
  try {
    // Phase 1: four writers at once, each in its own quarter.
    const quarter = Math.floor(SIZE / 4);
    await Promise.all(
      [0, 1, 2, 3].map(async (w) => {
        for (const { off, data } of ops(seed + w, w * quarter, (w + 1) * quarter, 40)) {
          await fd.write(data, 0, data.length, off);
          fs.writeSync(mfd, data, 0, data.length, off);
        }
      }),
    );
    // Phase 2: one writer, overlapping anywhere (later writes win), with an fsync in the middle.
    const all = ops(seed + 99, 0, SIZE, 60);
    for (const [i, { off, data }] of all.entries()) {
      await fd.write(data, 0, data.length, off);
      fs.writeSync(mfd, data, 0, data.length, off);
      if (i === 30) await fd.sync();
    }
    // Read back a few ranges through the mount while it is live.
    const r = rng(seed + 7);
    for (let i = 0; i < 20; i++) {
      const off = Math.floor(r() * (SIZE - 300_000));
      const a = Buffer.alloc(300_000);
      const b = Buffer.alloc(300_000);
      await fd.read(a, 0, a.length, off);
      fs.readSync(mfd, b, 0, b.length, off);
      expect(a.equals(b), `read-back mismatch at ${off}`).toBe(true);
    }
  } finally {
    await fd.close();
    fs.closeSync(mfd);
  }
}

describe('write storms through the mount, checked by qemu-img', () => {
  for (const [i, v] of variants.entries()) {
    it(`${v.name} (seed ${BASE_SEED + i * 1000})`, async () => {
      v.make(fx.images);
      const image = path.join(fx.images, v.file);
      const mirror = path.join(fx.dir, 'mirror.raw');
      execFileSync('qemu-img', ['convert', '-O', 'raw', image, mirror]);
      const m = await fx.mount(v.mountArgs ?? []);
      await storm(path.join(m.mnt, v.file + '.raw'), mirror, BASE_SEED + i * 1000);
      expect(await m.unmount()).toBe(0);
      const check = qemuCheck(image, v.format);
      expect(check.ok, check.output).toBe(true);
      const cmp = qemuCompare(image, mirror, v.format);
      expect(cmp.equal, cmp.output).toBe(true);
    }, 300_000);
  }
});

describe('O_DIRECT writes at queue depth 16 through the mount, checked by fio and qemu-img', () => {
  // Half the image holds data (writes there go in place, answered inside dispatch: the
  // synchronous path), half is unallocated (writes there allocate clusters: the asynchronous
  // path); fio sends both at once, 16 in flight, mixed sizes, and verifies every block it wrote.
  for (const fmt of ['qcow2', 'vmdk'] as const) {
    it(`${fmt}: fio libaio randwrite with crc32c verify; the image equals the served view and checks clean`, async () => {
      const image = path.join(fx.images, `qd.${fmt}`);
      img(['create', '-f', fmt, image, String(SIZE)]);
      io(image, ['write -P 0x5a 0 24M'], fmt);
      const m = await fx.mount(['--stats']);
      const view = path.join(m.mnt, `qd.${fmt}.raw`);
      const r = spawnSync(
        'fio',
        [
          '--name=qd16',
          `--filename=${view}`,
          '--rw=randwrite',
          '--bsrange=4k-64k',
          '--direct=1',
          '--ioengine=libaio',
          '--iodepth=16',
          `--size=${SIZE}`,
          '--io_size=24M',
          '--verify=crc32c',
          '--do_verify=1',
          '--verify_fatal=1',
          '--verify_state_save=0',
          `--randseed=${BASE_SEED}`,
        ],
        { encoding: 'utf8' },
      );
      expect(r.status, r.stdout + r.stderr).toBe(0);
      // What the mount serves, copied out while it is live, is what the image holds afterwards.
      const served = path.join(fx.dir, 'served.raw');
      fs.copyFileSync(view, served);
      expect(await m.unmount()).toBe(0);
      const check = qemuCheck(image, fmt);
      expect(check.ok, check.output).toBe(true);
      const cmp = qemuCompare(image, served, fmt);
      expect(cmp.equal, cmp.output).toBe(true);
      const atOnce = /answered at once: reads \d+ writes (\d+)/.exec(m.stderr());
      expect(Number(atOnce?.[1])).toBeGreaterThan(50);
    }, 300_000);
  }
});

describe('an O_DIRECT client and a buffered client on one view, checked against a model and by qemu-img', () => {
  // The synchronous write path (O_DIRECT, allocated clusters) meets the merger's deferred writes
  // (buffered, unaligned) on the same pages: every read equals the model, and so does the image.
  for (const fmt of ['qcow2', 'vmdk'] as const) {
    it(`${fmt}: interleaved O_DIRECT and buffered writes, reads and fsyncs`, async () => {
      const image = path.join(fx.images, `mixed.${fmt}`);
      img(['create', '-f', fmt, image, String(8 << 20)]);
      io(image, ['write -P 0x33 0 4M'], fmt); // half allocated: in-place writes and allocations both
      const m = await fx.mount(['--stats']);
      const mirror = path.join(fx.dir, 'mixed.raw');
      const r = spawnSync(
        'python3',
        [path.join(__dirname, '../helpers/mixed-io.py'), path.join(m.mnt, `mixed.${fmt}.raw`), mirror, String(BASE_SEED), '3000'],
        {
          encoding: 'utf8',
        },
      );
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(await m.unmount()).toBe(0);
      const check = qemuCheck(image, fmt);
      expect(check.ok, check.output).toBe(true);
      const cmp = qemuCompare(image, mirror, fmt);
      expect(cmp.equal, cmp.output).toBe(true);
      const atOnce = /answered at once: reads \d+ writes (\d+)/.exec(m.stderr());
      expect(Number(atOnce?.[1])).toBeGreaterThan(100);
    }, 300_000);
  }
});
