/**
 * The VMDK driver when a host I/O fails part way (found by review, each test failing before its
 * fix; qcow2's are in ../qcow2/failure-paths.test.ts):
 * - a grain directory or streamOptimized footer whose write failed at flush was already marked
 *   clean: the next flush and close wrote nothing (new tables unreachable, their data lost while
 *   the image still checked clean; a stream with no footer, which no longer opens);
 * - a request or flush over several extents ended at the first failure while another extent's
 *   I/O still ran: a later acknowledged write was overwritten, and close closed the files under
 *   a flush still writing (its table landed in whatever file took the descriptor number);
 * - --no-multi-alloc: writing one entry through marked the whole table clean, so another
 *   request's entry whose own write-through failed was never written;
 * - a failed CID update was kept for good: every later write failed until a remount.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import type { HostFile } from '../../../src/io/host-file';
import { failWrites, holdNext, injectedError } from '../../helpers/host-faults';
import { qemuCheck, qemuImg, qemuIo, qemuIoOutput } from '../../helpers/qemu';
import { corpusDir, makeHandSparse, tmpDir } from './helpers';

const dir = tmpDir('vmdk-failure-paths');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const GiB = 1 << 30;

function extentFiles(img: unknown): HostFile[] {
  return (img as { extents: Array<{ file: HostFile }> }).extents.map((e) => e.file);
}

function extentFile(img: unknown): HostFile {
  return extentFiles(img)[0]!;
}

/** A 4 GiB twoGbMaxExtentSparse image: two extent files, the second from 2 GiB. */
function twoExtents(name: string): string {
  const f = path.join(dir, name);
  qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', f, '4G']);
  return f;
}

describe('vmdk: failed GD write at flush', () => {
  for (const noMultiAlloc of [false, true])
    it(`keeps the directory dirty; the next flush writes it (noMultiAlloc=${noMultiAlloc})`, async () => {
      const f = path.join(dir, `gd-${noMultiAlloc}.vmdk`);
      makeHandSparse(f, { capacitySectors: 2048, grainSectors: 8, gtes: 16 });
      const img = await openImage(f, { writable: true, tuning: { vmdk: { noMultiAlloc } } });
      const file = extentFile(img);
      try {
        const restore = failWrites(file, 'gd', { times: Infinity });
        // noMultiAlloc writes the entry (and the GD) through inside the write itself.
        const w = img.write(65536, Buffer.alloc(4096, 0x5a));
        if (noMultiAlloc) await expect(w).rejects.toThrow(/EIO/);
        else {
          await w;
          await expect(img.flush()).rejects.toThrow(/EIO/);
        }
        restore();
        if (noMultiAlloc) await img.write(65536, Buffer.alloc(4096, 0x5a)); // the grain is now allocated: in place
        await img.flush(); // succeeds: it must have written the GD
      } finally {
        await img.close();
      }
      const check = qemuCheck(f, 'vmdk');
      expect(check.ok, check.output).toBe(true);
      expect(qemuIoOutput(f, ['read -P 0x5a 64k 4k'], 'vmdk')).not.toMatch(/Pattern verification failed/);
    });
});

describe('vmdk streamOptimized: failed footer write at flush', () => {
  it('keeps the footer dirty; after the next flush and close QEMU opens the image', async () => {
    // A VMware-made stream with the GD in the footer (as stream-write.test.ts uses it), made RW.
    const bytes = fs.readFileSync(path.join(corpusDir(), 'xo-vmdk-to-vhd/test.vmdk'));
    const at = bytes.indexOf('RDONLY 8192 SPARSE');
    expect(at).toBeGreaterThan(0);
    bytes.write('RW     ', at, 'latin1');
    const f = path.join(dir, 's.vmdk');
    fs.writeFileSync(f, bytes);
    const probe = await openImage(f, { writable: false });
    const free = (await probe.map(0, probe.virtualSize)).find(
      (x) => x.kind === 'unallocated' && x.length >= 65536 && x.offset % 65536 === 0,
    )!;
    await probe.close();
    const img = await openImage(f, { writable: true });
    expect(img.readOnly).toBe(false);
    const file = extentFile(img);
    try {
      await img.write(free.offset, Buffer.alloc(65536, 0x5a)); // appended over the old footer
      const restore = failWrites(file, 'header', { times: Infinity });
      await expect(img.flush()).rejects.toThrow(/EIO/);
      restore();
      await img.flush();
    } finally {
      await img.close();
    }
    const check = qemuCheck(f, 'vmdk');
    expect(check.ok, check.output).toBe(true);
    expect(qemuIo(f, [`read -P 0x5a ${free.offset} 64k`], 'vmdk')).not.toMatch(/Pattern verification failed/);
  });
});

describe('vmdk: a request across two extents, one extent failing', () => {
  it('write: ends only once the other extent’s write ended (a later acknowledged write survives)', async () => {
    const f = twoExtents('w.vmdk');
    const img = await openImage(f, { writable: true });
    const [f0, f1] = extentFiles(img);
    expect(f0).not.toBe(f1);
    try {
      await img.write(2 * GiB - 65536, Buffer.alloc(2 * 65536, 1)); // grains allocated: in place next
      const held = holdNext(f1!, 'write', 'data');
      const restore = failWrites(f0!, 'data', { times: 1 });
      const w1 = img.write(2 * GiB - 4096, Buffer.alloc(8192, 0xaa));
      const w1Done = w1.then(
        () => 'ok',
        () => 'failed',
      );
      await held.reached;
      const first = await Promise.race([w1Done, new Promise((r) => setTimeout(() => r('running'), 50))]);
      if (first === 'failed') await img.write(2 * GiB, Buffer.alloc(4096, 0xbb)); // acknowledged after W1 failed
      held.release();
      await w1Done;
      restore();
      held.restore();
      const back = Buffer.alloc(4096);
      await img.read(2 * GiB, back);
      if (first === 'failed') expect(back[0], 'the acknowledged later write was overwritten by the failed W1').toBe(0xbb);
      expect(first, 'W1 ended while its write to the second extent was still running').toBe('running');
    } finally {
      await img.close();
    }
  });

  it('close: a failed flush of one extent does not close the files under the other extent’s flush', async () => {
    const f = twoExtents('c.vmdk');
    const img = await openImage(f, { writable: true });
    const [f0, f1] = extentFiles(img);
    const victims: Array<{ p: string; fd: number }> = [];
    try {
      await img.write(64 << 20, Buffer.alloc(65536, 0x11)); // extent 0: a new grain, its table dirty
      await img.write(2 * GiB + (64 << 20), Buffer.alloc(65536, 0x22)); // extent 1 likewise
      const restore = failWrites(f0!, 'gt', { times: Infinity });
      const held = holdNext(f1!, 'datasync');
      const closing = img.close().then(
        () => 'ok',
        () => 'failed',
      );
      await held.reached;
      const first = await Promise.race([closing, new Promise((r) => setTimeout(() => r('running'), 100))]);
      // Files opened now take the descriptor numbers close gave back.
      for (let i = 0; i < 4; i++) {
        const p = path.join(dir, `victim${i}`);
        fs.writeFileSync(p, Buffer.alloc(4 << 20));
        victims.push({ p, fd: fs.openSync(p, 'r+') });
      }
      held.release();
      await closing;
      await new Promise((r) => setTimeout(r, 100));
      restore();
      held.restore();
      const touched = victims.filter((v) => fs.readFileSync(v.p).some((b) => b !== 0)).map((v) => v.p);
      expect(touched, 'an unrelated file got the grain table of a closed extent').toEqual([]);
      expect(first, 'close returned while the other extent was still flushing').toBe('running');
    } finally {
      for (const v of victims) fs.closeSync(v.fd);
    }
  });
});

describe('vmdk --no-multi-alloc: write-through of one entry', () => {
  it('does not mark another request’s unwritten entry clean', async () => {
    const f = path.join(dir, 'wt.vmdk');
    makeHandSparse(f, { capacitySectors: 2048, grainSectors: 8, gtes: 16 }); // 4 KiB grains, 16 per table
    const img = await openImage(f, { writable: true, tuning: { vmdk: { noMultiAlloc: true } } });
    const file = extentFile(img);
    try {
      await img.write(0, Buffer.alloc(4096, 1)); // table 0 exists on disk now
      await img.flush();
      // gt writes: R1's (primary + redundant) held until release; the next one (R2's) fails.
      const write = file.write.bind(file);
      let n = 0;
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let reached!: () => void;
      const heldReached = new Promise<void>((r) => (reached = r));
      file.write = (data, pos, tag) => {
        if (tag !== 'gt') return write(data, pos, tag);
        n++;
        if (n <= 2) {
          reached();
          return gate.then(() => write(data, pos, tag));
        }
        if (n === 3) return Promise.reject(injectedError('EIO'));
        return write(data, pos, tag);
      };
      const r1 = img.write(4096, Buffer.alloc(4096, 0x11)); // grain 1
      await heldReached;
      const r2 = img.write(8192, Buffer.alloc(4096, 0x22)); // grain 2, same table: entry set, write-through queued
      await new Promise((r) => setTimeout(r, 20));
      release();
      await r1;
      await expect(r2).rejects.toThrow(/EIO/);
      file.write = write;
      await img.write(8192, Buffer.alloc(4096, 0x33)); // grain 2 is mapped in memory: in place, acknowledged
      await img.flush();
    } finally {
      await img.close();
    }
    expect(qemuIoOutput(f, ['read -P 0x11 4k 4k'], 'vmdk')).not.toMatch(/Pattern verification failed/);
    expect(qemuIoOutput(f, ['read -P 0x33 8k 4k'], 'vmdk'), 'the acknowledged write to grain 2 is lost').not.toMatch(
      /Pattern verification failed/,
    );
  });
});

describe('vmdk: a CID update that failed once', () => {
  it('is tried again by the next write', async () => {
    const f = path.join(dir, 'cid.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', f, '16M']);
    const img = await openImage(f, { writable: true });
    const file = (img as unknown as { embeddedIn: HostFile }).embeddedIn;
    try {
      const restore = failWrites(file, 'descriptor', { code: 'ENOSPC' });
      await expect(img.write(0, Buffer.alloc(4096, 0x5a))).rejects.toThrow(/ENOSPC/);
      restore();
      await img.write(0, Buffer.alloc(4096, 0x5a)); // the disk has room again
    } finally {
      await img.close().catch(() => {});
    }
    expect(qemuIo(f, ['read -P 0x5a 0 4k'], 'vmdk')).not.toMatch(/Pattern verification failed/);
  });
});
