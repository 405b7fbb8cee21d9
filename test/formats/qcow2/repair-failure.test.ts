/**
 * Review of the qcow2 repair paths (check -r, the rebuild at a writable open of a dirty image)
 * when a host I/O fails part way or the power is cut. Found by review; each test failed before its fix.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { qcow2Driver } from '../../../src/formats/qcow2';
import { openImage } from '../../../src/image/open';
import { HostFile } from '../../../src/io/host-file';
import type { IoTag } from '../../../src/io/counters';
import { injectedError } from '../../helpers/host-faults';
import { CrashRecorder } from '../../helpers/crash-states';
import { qemuImg, qemuIo } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('review-repair');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const KiB = 1024;
const CS = 64 * KiB;
const CORRUPT = 2n;
const DIRTY = 1n;

const check = (file: string, repair: boolean) => qcow2Driver.check!(file, { writable: repair, repair, warn: () => undefined } as never);

function incompat(file: string): bigint {
  return fs.readFileSync(file).readBigUInt64BE(72);
}
function setIncompat(file: string, bits: bigint): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(8);
  fs.readSync(fd, b, 0, 8, 72);
  b.writeBigUInt64BE(b.readBigUInt64BE(0) | bits);
  fs.writeSync(fd, b, 0, 8, 72);
  fs.closeSync(fd);
}
function poke64(file: string, at: number, v: bigint): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  fs.writeSync(fd, b, 0, 8, at);
  fs.closeSync(fd);
}
/** qemu-img check's JSON whatever its exit status. */
function qcheck(file: string, repair = false): Record<string, number> {
  try {
    return JSON.parse(
      execFileSync('qemu-img', ['check', ...(repair ? ['-r', 'all'] : []), '--output=json', file], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    ) as Record<string, number>;
  } catch (e) {
    const out = (e as { stdout?: string }).stdout ?? '';
    try {
      return JSON.parse(out) as Record<string, number>;
    } catch {
      return { 'check-errors': 1, unparsable: 1 };
    }
  }
}

/**
 * qemu-img create 4M + 64 KiB written at 0. Layout (64 KiB clusters): header 0, refcount table
 * 0x10000, refcount block 0x20000, L1 0x30000, L2 0x40000, data 0x50000; 6 clusters.
 */
function base(name: string, opts: string[] = []): string {
  const f = path.join(dir, name);
  qemuImg(['create', '-q', '-f', 'qcow2', ...opts, f, '4M']);
  qemuIo(f, ['write -P 0x5a 0 64k']);
  expect(fs.statSync(f).size).toBe(6 * CS);
  return f;
}

/** Makes the `n`-th (1-based) host write tagged `tag` of any HostFile fail with EIO. */
function failNthWrite(tag: IoTag, n: number): () => void {
  const proto = HostFile.prototype;
  const write = proto.write;
  let seen = 0;
  proto.write = function (this: HostFile, data, pos, t) {
    if (t === tag && ++seen === n) return Promise.reject(injectedError('EIO'));
    return write.call(this, data, pos, t);
  };
  return () => void (proto.write = write);
}

describe('qcow2 repair when a step fails or the power is cut', () => {
  it('a repair cut off after its new refcounts were switched in: running it again clears the corrupt bit (else the image stays read-only for good)', async () => {
    const f = base('corrupt-bit.qcow2');
    // A leak: one more cluster, counted but unused.
    fs.appendFileSync(f, Buffer.alloc(CS));
    const fd = fs.openSync(f, 'r+');
    fs.writeSync(fd, Buffer.from([0, 1]), 0, 2, 0x20000 + 6 * 2);
    fs.closeSync(fd);
    setIncompat(f, CORRUPT);
    expect(qcheck(f)['leaks']).toBe(1);

    // The repair: fresh refcounts, header points at them (1st header write), then the header's
    // corrupt/dirty bits cleared (2nd header write) -- that one fails (or the power is cut there).
    const restore = failNthWrite('header', 2);
    try {
      await expect(check(f, true)).rejects.toThrow(/EIO/);
    } finally {
      restore();
    }
    const q = path.join(dir, 'corrupt-bit.qemu.qcow2');
    fs.copyFileSync(f, q);

    // Run the repair again, as the user is told to.
    const again = await check(f, true);
    expect(again.corruptions + again.leaks).toBe(0);
    qcheck(q, true); // the oracle: qemu-img check -r all on the same file
    expect(incompat(q) & CORRUPT, 'qemu-img check -r all clears the corrupt bit of a consistent image').toBe(0n);
    expect(incompat(f) & CORRUPT, 'vdiskfs check -r all left the corrupt bit set: the image stays read-only').toBe(0n);
  });

  it('corruptions the rebuild cannot fix: the corrupt bit stays set and the new refcount table is not put on a cluster an L2 entry names', async () => {
    const f = base('past-eof.qcow2');
    // Guest cluster 1 -> host cluster 6 (the file's end), COPIED; the image flagged corrupt.
    poke64(f, 0x40000 + 8, (1n << 63n) | BigInt(6 * CS));
    setIncompat(f, CORRUPT);
    const q = path.join(dir, 'past-eof.qemu.qcow2');
    fs.copyFileSync(f, q);
    const qBefore = qcheck(q, true);
    expect(qBefore['corruptions'] ?? 0, JSON.stringify(qBefore)).toBeGreaterThan(0); // QEMU cannot fix it either
    expect(incompat(q) & CORRUPT, 'qemu-img check -r all keeps the corrupt bit while corruptions remain').toBe(CORRUPT);

    const r = await check(f, true);
    expect(r.corruptions, 'corruptions remain after the repair').toBeGreaterThan(0);
    const reftable = Number(fs.readFileSync(f).readBigUInt64BE(48));
    expect.soft(reftable, 'new refcount table placed on host cluster 6, which guest cluster 1 maps to').not.toBe(6 * CS);
    expect.soft(incompat(f) & CORRUPT, 'vdiskfs cleared the corrupt bit with corruptions left').toBe(CORRUPT);
  });

  it('a dirty image with a reference past the end of the file: the writable open refuses to rebuild over it, and changes nothing', async () => {
    const f = base('dirty-past-eof.qcow2', ['-o', 'lazy_refcounts=on']);
    poke64(f, 0x40000 + 8, (1n << 63n) | BigInt(6 * CS));
    setIncompat(f, DIRTY);
    const before = fs.readFileSync(f);
    // The rebuild would have put the new refcount table on host cluster 6, under that entry's
    // data, and the next guest write would have destroyed it.
    await expect(openImage(f, { writable: true, warn: () => undefined })).rejects.toThrow(
      /past the end of the file; refcounts not rebuilt/,
    );
    expect(fs.readFileSync(f).equals(before), 'the image is left as it was').toBe(true);
  });

  it('power cut during check -r: the header never says "consistent" before the COPIED fixes are durable', async () => {
    const f = base('copied.qcow2');
    qemuImg(['snapshot', '-c', 's1', f]); // cluster 0's data and its L2 table now have refcount 2
    // The active L2 entry of guest cluster 0 claims COPIED (refcount 1): an in-place write would
    // change snapshot s1. Flagged corrupt (QEMU sets the bit for what it finds broken).
    const l2 = Number(fs.readFileSync(f).readBigUInt64BE(0x30000) & 0x00fffffffffffe00n);
    const e = fs.readFileSync(f).readBigUInt64BE(l2);
    poke64(f, l2, e | (1n << 63n));
    setIncompat(f, CORRUPT);
    expect(qcheck(f)['corruptions']).toBeGreaterThan(0);

    const rec = new CrashRecorder(f);
    let r: Awaited<ReturnType<typeof check>>;
    try {
      r = await check(f, true);
    } finally {
      rec.stop();
    }
    expect(r.corruptions + r.leaks).toBe(0);
    const final = fs.readFileSync(f);
    const bad: string[] = [];
    const states = rec.states({ seed: 7, perEpoch: 20, allSubsetsUpTo: 6 });
    const seen = new Set<string>();
    const s = path.join(dir, 'copied.state.qcow2');
    for (const st of states) {
      const bytes = rec.materialise(st);
      const key = bytes.toString('base64');
      if (seen.has(key)) continue;
      seen.add(key);
      fs.writeFileSync(s, bytes);
      const flags = bytes.readBigUInt64BE(72);
      if ((flags & (CORRUPT | DIRTY)) !== 0n) continue; // still flagged: nobody trusts it yet
      const j = qcheck(s);
      if ((j['corruptions'] ?? 0) + (j['check-errors'] ?? 0) > 0)
        bad.push(`epoch ${st.epoch}: header clean, qemu-img check ${JSON.stringify(j)}`);
    }
    fs.writeFileSync(f, final);
    expect(bad, rec.timeline()).toEqual([]);
  });
});
