/**
 * check() on images with many snapshots: the verdict and counts of `qemu-img check`, and the
 * work bounded by the tables that exist, not by how often snapshots reference them (a table
 * of 65,536 snapshots once took 15-50 s).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qcow2Driver } from '../../../src/formats/qcow2';
import { addIoObserver } from '../../../src/io/host-file';
import { CORPUS_DIR, qemuImg, qemuIo } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('check-snapshots');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** check() on `file`, with the number of host reads it made. */
async function checkCounting(
  file: string,
): Promise<{ corruptions: number; leaks: number; errors: number; reads: number; messages: string[] }> {
  let reads = 0;
  const stop = addIoObserver((e) => {
    if (e.kind === 'read' && e.path === file) reads++;
  });
  try {
    const r = await qcow2Driver.check!(file, { writable: false, repair: false, warn: () => undefined } as never);
    return { ...r, reads };
  } finally {
    stop();
  }
}

/** `qemu-img check`'s counts (it exits 2 on corruption, so read its JSON whatever the status). */
function qemuCounts(file: string): { corruptions: number; leaks: number } {
  const r = spawnSync('qemu-img', ['check', '--output=json', file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const json = JSON.parse(r.stdout) as Record<string, number | undefined>;
  return { corruptions: json['corruptions'] ?? 0, leaks: json['leaks'] ?? 0 };
}

/** An image with data in several L2 tables (512 KiB clusters of 4 KiB: one L2 table per 2 MiB) and `n` snapshots. */
function withSnapshots(name: string, n: number): string {
  const f = path.join(dir, name);
  qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', f, '64M']);
  qemuIo(f, ['write -P 0x11 0 64k', 'write -P 0x12 10M 64k', 'write -P 0x13 40M 64k']);
  for (let i = 0; i < n; i++) qemuImg(['snapshot', '-c', `s${i}`, f]);
  return f;
}

describe('qcow2 check with many snapshots', () => {
  it("the 65,536-snapshot corpus image: qemu-img check's verdict and count, in a few reads", async () => {
    const f = path.join(CORPUS_DIR, 'cdi/invalid-qcow-large-json.qcow2');
    const ours = await checkCounting(f);
    expect(ours).toMatchObject({ errors: 0, ...qemuCounts(f) });
    expect(ours.corruptions).toBeGreaterThan(65536); // every entry lacks v3's extra data
    expect(ours.messages).toContain('ERROR snapshot table entry 0 is incomplete');
    expect(ours.reads).toBeLessThan(32);
  });

  it('a clean image: snapshots add one read each (their L1 table), never their shared L2 tables', async () => {
    const few = withSnapshots('few.qcow2', 2);
    const many = withSnapshots('many.qcow2', 12);
    const a = await checkCounting(few);
    const b = await checkCounting(many);
    for (const [f, r] of [
      [few, a],
      [many, b],
    ] as const)
      expect(r, f).toMatchObject({ errors: 0, ...qemuCounts(f) });
    expect(b.reads - a.reads).toBe(10);
  });

  it("a table whose 2,000 entries all point at one snapshot's L1: counted as often as referenced, read once", async () => {
    const f = withSnapshots('dup.qcow2', 1);
    const buf = fs.readFileSync(f);
    const tableAt = Number(buf.readBigUInt64BE(64));
    const e = tableAt;
    const entryLen = Math.ceil((40 + buf.readUInt32BE(e + 36) + buf.readUInt16BE(e + 12) + buf.readUInt16BE(e + 14)) / 8) * 8;
    const entry = Buffer.alloc(entryLen);
    buf.copy(entry, 0, e, Math.min(buf.length, e + entryLen)); // the file may end inside the padding
    const copies = 2000;
    const table = Buffer.concat(Array.from({ length: copies }, () => entry));
    const newAt = Math.ceil(buf.length / 4096) * 4096;
    const out = Buffer.concat([buf, Buffer.alloc(newAt - buf.length), table]);
    out.writeUInt32BE(copies, 60);
    out.writeBigUInt64BE(BigInt(newAt), 64);
    fs.writeFileSync(f, out);
    const ours = await checkCounting(f);
    const theirs = qemuCounts(f);
    expect(theirs.corruptions).toBeGreaterThan(0);
    expect(ours).toMatchObject({ errors: 0, ...theirs });
    const single = await checkCounting(withSnapshots('single.qcow2', 1));
    expect(ours.reads - single.reads).toBeLessThanOrEqual(1); // the bigger table is one read too
  });
});
