/**
 * Multi-TiB qcow2 images in the commands (not timed: make bench measures): a 2 TiB image with
 * preallocated metadata (32 Mi host clusters) checks and maps exactly as qemu-img does, and a
 * lazy-refcount image whose VM died after a write past 2 TiB (file grown to 3 TiB, dirty bit
 * set) is repaired by its first writable open and by `check -r all`, then found clean by qemu-img.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterCounts } from '../../../src/formats/qcow2/cluster-counts';
import { openImage } from '../../../src/image/open';
import { tmpDir } from '../../helpers/image-io';
import { CLI } from '../../helpers/mount';
import { qemuCheck } from '../../helpers/qemu';

const GiB = 2 ** 30;
let dir: string;
const qemuImg = (...a: string[]) => execFileSync('qemu-img', a, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const ours = (...a: string[]) => spawnSync(process.execPath, [CLI, ...a], { cwd: dir, encoding: 'utf8', maxBuffer: 256 << 20 });

beforeAll(() => {
  dir = tmpDir('qcow2-scale');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A lazy-refcount image whose writer died after a write past 2 TiB: dirty bit set, refcounts stale. */
function crashedLazyImage(name: string): string {
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,preallocation=metadata', name, '2T');
  qemuImg('resize', '-q', name, '3T');
  // qemu-io's abort: the process dies with the dirty bit set and the new clusters uncounted.
  spawnSync('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x55 ${2200 * GiB} 1M`, '-c', 'abort', name], { cwd: dir, stdio: 'ignore' });
  expect(qemuCheck(path.join(dir, name), 'qcow2').ok).toBe(false);
  return path.join(dir, name);
}

describe('qcow2 at scale', () => {
  it('a 2 TiB image with preallocated metadata: check and map equal to qemu-img', () => {
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', 'm2t.qcow2', '2T');
    const q = JSON.parse(qemuImg('check', '--output=json', 'm2t.qcow2')) as Record<string, unknown>;
    const c = ours('check', '--output=json', 'm2t.qcow2');
    expect(c.status, c.stderr).toBe(0);
    const o = JSON.parse(c.stdout) as Record<string, unknown>;
    for (const k of [
      'check-errors',
      'corruptions',
      'leaks',
      'allocated-clusters',
      'total-clusters',
      'fragmented-clusters',
      'image-end-offset',
    ])
      expect(o[k], k).toEqual(q[k]);
    expect(q['allocated-clusters']).toBe(32 * 1024 * 1024);
    const qm = JSON.parse(qemuImg('map', '--output=json', 'm2t.qcow2')) as unknown[];
    const m = ours('map', '--output=json', 'm2t.qcow2');
    expect(m.status, m.stderr).toBe(0);
    expect(JSON.parse(m.stdout)).toEqual(qm);
  }, 300_000);

  it('a crashed lazy-refcount image of a 3 TiB file: repaired by its first writable open, written, clean', async () => {
    const f = crashedLazyImage('crashed.qcow2');
    const warnings: string[] = [];
    const img = await openImage(f, { writable: true, warn: (m) => warnings.push(m) });
    try {
      expect(warnings.join('\n')).toMatch(/rebuilding refcounts/);
      await img.write(2300 * GiB, Buffer.alloc(65536, 0x66));
      const back = Buffer.alloc(65536);
      await img.read(2200 * GiB, back);
      expect(back.every((b) => b === 0x55)).toBe(true);
    } finally {
      await img.close();
    }
    const after = qemuCheck(f, 'qcow2');
    expect(after.ok, after.output).toBe(true);
  }, 300_000);

  it('the same crash repaired by `vdiskfs check -r all`, as qemu-img check -r all would', () => {
    const f = crashedLazyImage('crashed2.qcow2');
    const r = ours('check', '-r', 'all', path.basename(f));
    expect(r.status, r.stderr).toBe(0);
    const after = qemuCheck(f, 'qcow2');
    expect(after.ok, after.output).toBe(true);
  }, 300_000);
});

describe('ClusterCounts', () => {
  it('counts in 16 bits and widens a cluster past 65534, down again, never below 0', () => {
    const c = new ClusterCounts(4);
    c.add(1, 65534);
    expect(c.get(1)).toBe(65534);
    c.add(1, 3);
    expect(c.get(1)).toBe(65537);
    c.add(1, 5_000_000);
    expect(c.get(1)).toBe(5_065_537);
    c.add(1, -5_065_530);
    expect(c.get(1)).toBe(7);
    c.add(2, -1);
    expect(c.get(2)).toBe(0);
    c.set(3, 2 ** 32 + 5);
    expect(c.get(3)).toBe(2 ** 32 - 1);
    expect(c.end()).toBe(4);
    c.set(3, 0);
    expect(c.end()).toBe(2);
  });
});
