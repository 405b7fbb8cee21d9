/**
 * Crash consistency in program order: the image file is copied after every metadata write and
 * every flush while seeded random writes, zero writes, COW of compressed and snapshot-shared
 * clusters and cache evictions happen. Each copy is what a crash at that moment would leave if
 * the disk kept the order of writes; `qemu-img check` must find no corruption in any of them
 * (leaks are allowed: "leak rather than corrupt"). This covers both directions of the seed's
 * dependency: refcounts before the L2 entries that use them, and frees after the dropped reference.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addIoObserver } from '../../../src/io/host-file';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuImg, qemuIo, rng } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('crash');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

/**
 * Copies the image after every metadata write and every flush: each copy is what a crash at
 * that moment would leave behind. Entries are `<copy>\t<kind>:<tag>`.
 */
function recordCrashStates(f: string, name: string): { states: string[]; stop: () => void } {
  const snapsDir = path.join(dir, name);
  fs.mkdirSync(snapsDir);
  const states: string[] = [];
  const stop = addIoObserver((e) => {
    if (e.path !== f) return;
    if ((e.kind === 'write' && e.tag !== 'data') || e.kind === 'flush') {
      const copy = path.join(snapsDir, `s${states.length}.qcow2`);
      fs.copyFileSync(f, copy);
      states.push(`${copy}\t${e.kind}:${e.tag ?? ''}`);
    }
  });
  return { states, stop: () => void stop() };
}

/** The recorded states qemu-img check finds corrupt (each copy is removed once checked). */
function corruptStates(states: string[]): string[] {
  const bad: string[] = [];
  for (const s of states) {
    const [file, what] = s.split('\t');
    if (corruptions(file!) > 0) bad.push(`${path.basename(file!)} after ${what}`);
    fs.rmSync(file!);
  }
  return bad;
}

function corruptions(file: string): number {
  try {
    const out = execFileSync('qemu-img', ['check', '--output=json', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return Number((JSON.parse(out) as Record<string, unknown>)['corruptions'] ?? 0);
  } catch (e) {
    const out = (e as { stdout?: string }).stdout ?? '';
    try {
      const j = JSON.parse(out) as Record<string, unknown>;
      return Number(j['corruptions'] ?? 0) + Number(j['check-errors'] ?? 0);
    } catch {
      return 1000; // qemu-img could not even read it
    }
  }
}

describe('qcow2 crash consistency (program order)', () => {
  it('no prefix of the host write sequence leaves a corrupt image', async () => {
    const src = path.join(dir, 'src.qcow2');
    const f = path.join(dir, 'img.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', src, '8M']);
    qemuIo(src, ['write -P 0x31 0 6M']);
    qemuImg(['convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', src, f]); // compressed clusters to overwrite
    qemuIo(f, ['write -P 0x32 6M 1M']);
    qemuImg(['snapshot', '-c', 'snap', f]); // shared clusters and tables
    const { states, stop } = recordCrashStates(f, 'states');
    const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 3 * 4096 } } });
    const r = rng(7);
    for (let op = 0; op < 160; op++) {
      const len = 1 + Math.floor(r() * (r() < 0.7 ? 9000 : 70000));
      const off = Math.floor(r() * (img.virtualSize - len));
      if (r() < 0.15) await img.writeZeroes(off, len);
      else await img.write(off, Buffer.alloc(len, op + 1));
      if (r() < 0.05) await img.flush();
    }
    await img.close();
    stop();
    expect(states.length).toBeGreaterThan(50);
    expect(corruptStates(states)).toEqual([]);
    const final = qemuCheck(f);
    expect(final.ok, final.output).toBe(true);
  });

  it('also while the refcount table grows and moves (512-byte clusters, 64-bit refcounts) and the L1 table moves (resize)', async () => {
    const f = path.join(dir, 'grow.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=64', f, '1M']);
    const { states, stop } = recordCrashStates(f, 'states-grow');
    const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 8 * 512 } } });
    const r = rng(11);
    for (let op = 0; op < 30; op++) {
      if (op === 15) await img.resize!(3 * MiB);
      const len = 1 + Math.floor(r() * 60000);
      const off = Math.floor(r() * (img.virtualSize - len));
      await img.write(off, Buffer.alloc(len, op + 1));
    }
    await img.close();
    stop();
    const tags = states.map((s) => s.split('\t')[1]);
    expect(tags).toContain('write:reftable');
    expect(tags).toContain('write:l1');
    expect(corruptStates(states)).toEqual([]);
    expect(qemuCheck(f).ok).toBe(true);
  });
});
