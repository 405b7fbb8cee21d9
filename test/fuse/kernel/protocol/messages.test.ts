import { describe, expect, it } from 'vitest';
import * as P from '../../../../src/fuse/kernel/protocol';

/** Little-endian struct builder: a list of [bytes, value] fields, as the C struct lists them. */
function struct(fields: Array<[4 | 8, number | bigint]>): Buffer {
  const b = Buffer.alloc(fields.reduce((n, [w]) => n + w, 0));
  let o = 0;
  for (const [w, v] of fields) {
    if (w === 4) b.writeUInt32LE(Number(v), o);
    else b.writeBigUInt64LE(BigInt(v), o);
    o += w;
  }
  return b;
}

describe('open / release / flush / fsync', () => {
  it('decodes fuse_open_in and encodes fuse_open_out', () => {
    expect(
      P.decodeOpenIn(
        struct([
          [4, 0o1002],
          [4, 0],
        ]),
        0,
      ),
    ).toEqual({ flags: 0o1002 });
    const b = Buffer.alloc(16);
    expect(P.encodeOpenOut(b, 0, 42, P.OpenOutFlag.KEEP_CACHE)).toBe(16);
    expect(b.readBigUInt64LE(0)).toBe(42n);
    expect(b.readUInt32LE(8)).toBe(2);
  });

  it('decodes fuse_release_in, fuse_flush_in, fuse_fsync_in', () => {
    expect(
      P.decodeReleaseIn(
        struct([
          [8, 3],
          [4, 2],
          [4, 1],
          [8, 99],
        ]),
        0,
      ),
    ).toEqual({ fh: 3, flags: 2 });
    expect(
      P.decodeFlushIn(
        struct([
          [8, 4],
          [4, 0],
          [4, 0],
          [8, 99],
        ]),
        0,
      ),
    ).toEqual({ fh: 4 });
    expect(
      P.decodeFsyncIn(
        struct([
          [8, 5],
          [4, 1],
          [4, 0],
        ]),
        0,
      ),
    ).toEqual({ fh: 5, datasync: true });
    expect(
      P.decodeFsyncIn(
        struct([
          [8, 5],
          [4, 0],
          [4, 0],
        ]),
        0,
      ),
    ).toEqual({ fh: 5, datasync: false });
  });
});

describe('read / write', () => {
  it('decodes fuse_read_in', () => {
    expect(
      P.decodeReadIn(
        struct([
          [8, 7],
          [8, 2 ** 33],
          [4, 1 << 20],
          [4, 0],
          [8, 0],
          [4, 0],
          [4, 0],
        ]),
        0,
      ),
    ).toEqual({ fh: 7, offset: 2 ** 33, size: 1 << 20 });
  });

  it('decodes fuse_write_in and finds the payload after its 40 bytes', () => {
    const head = struct([
      [8, 7],
      [8, 4096],
      [4, 5],
      [4, 0],
      [8, 0],
      [4, 0],
      [4, 0],
    ]);
    const req = Buffer.concat([Buffer.alloc(40), head, Buffer.from('hello')]);
    const w = P.decodeWriteIn(req, 40, req.length);
    expect(w).toEqual({ fh: 7, offset: 4096, size: 5, dataOffset: 80 });
    expect(req.subarray(w.dataOffset, w.dataOffset + w.size).toString()).toBe('hello');
    expect(() => P.decodeWriteIn(req, 40, req.length - 1)).toThrow(RangeError);
  });

  it('encodes fuse_write_out', () => {
    const b = Buffer.alloc(8, 0xff);
    expect(P.encodeWriteOut(b, 0, 4096)).toBe(8);
    expect(b.readUInt32LE(0)).toBe(4096);
    expect(b.readUInt32LE(4)).toBe(0);
  });
});

describe('readdir', () => {
  const entries: P.DirEntry[] = [
    { ino: 1, name: '.', type: P.DirentType.DIR },
    { ino: 1, name: '..', type: P.DirentType.DIR },
    { ino: 2, name: 'a.qcow2.raw', type: P.DirentType.REG },
  ];

  it('packs fuse_dirent records padded to 8 bytes; off is the next index', () => {
    const b = Buffer.alloc(4096);
    const n = P.encodeDirents(b, 0, 4096, entries, 0);
    expect(n).toBe(32 + 32 + 40);
    expect(b.readBigUInt64LE(64)).toBe(2n); // ino
    expect(b.readBigUInt64LE(72)).toBe(3n); // off of the next entry
    expect(b.readUInt32LE(80)).toBe(11); // namelen
    expect(b.readUInt32LE(84)).toBe(8); // DT_REG
    expect(b.toString('utf8', 88, 99)).toBe('a.qcow2.raw');
    expect(b.subarray(99, 104).every((x) => x === 0)).toBe(true);
  });

  it('stops before a record that does not fit, and resumes from an offset', () => {
    const b = Buffer.alloc(4096);
    expect(P.encodeDirents(b, 0, 70, entries, 0)).toBe(64);
    expect(P.encodeDirents(b, 0, 4096, entries, 2)).toBe(40);
    expect(P.encodeDirents(b, 0, 4096, entries, 3)).toBe(0);
  });

  it('READDIRPLUS: fuse_direntplus = fuse_entry_out (128 bytes) + fuse_dirent; only what fits, each with its entry', () => {
    const b = Buffer.alloc(4096, 0xee);
    const fit = P.direntPlusFit(128 + 32 + 128 + 32 + 8, entries, 0);
    expect(fit).toBe(2); // the third record (128 + 40) does not fit
    const n = P.encodeDirentsPlus(b, 0, entries, 0, fit, (i, buf, at) => {
      if (i === 1) buf.writeBigUInt64LE(77n, at); // a node id for the second entry only
    });
    expect(n).toBe(2 * P.ENTRY_OUT_SIZE + 32 + 32);
    expect(b.subarray(0, P.ENTRY_OUT_SIZE).every((x) => x === 0)).toBe(true); // no entry: all zeros, the name alone
    expect(b.readBigUInt64LE(P.ENTRY_OUT_SIZE + 8)).toBe(1n); // the dirent's off: the next index
    const second = P.ENTRY_OUT_SIZE + 32;
    expect(b.readBigUInt64LE(second)).toBe(77n);
    expect(b.readBigUInt64LE(second + P.ENTRY_OUT_SIZE + 8)).toBe(2n);
    expect(b.readUInt8(n)).toBe(0xee); // nothing written past the records
  });
});

describe('setattr, statfs, fallocate, lseek, forget, interrupt', () => {
  it('decodes fuse_setattr_in: only the fields `valid` names', () => {
    const b = Buffer.alloc(88);
    b.writeUInt32LE(P.SetattrValid.SIZE | P.SetattrValid.FH, 0);
    b.writeBigUInt64LE(6n, 8); // fh
    b.writeBigUInt64LE(1n << 30n, 16); // size
    b.writeUInt32LE(0o600, 68); // mode (not valid)
    expect(P.decodeSetattrIn(b, 0)).toEqual({ valid: P.SetattrValid.SIZE | P.SetattrValid.FH, fh: 6, size: 1 << 30, mode: undefined });
    b.writeUInt32LE(P.SetattrValid.MODE, 0);
    expect(P.decodeSetattrIn(b, 0)).toEqual({ valid: P.SetattrValid.MODE, fh: undefined, size: undefined, mode: 0o600 });
  });

  it('encodes fuse_kstatfs (80 bytes)', () => {
    const b = Buffer.alloc(80, 0xff);
    expect(
      P.encodeStatfsOut(b, 0, { blocks: 100, bfree: 50, bavail: 40, files: 10, ffree: 5, bsize: 4096, namelen: 255, frsize: 4096 }),
    ).toBe(80);
    expect([0, 8, 16, 24, 32].map((o) => Number(b.readBigUInt64LE(o)))).toEqual([100, 50, 40, 10, 5]);
    expect([40, 44, 48, 52].map((o) => b.readUInt32LE(o))).toEqual([4096, 255, 4096, 0]);
    expect(b.subarray(56, 80).every((x) => x === 0)).toBe(true);
  });

  it('decodes fuse_fallocate_in and fuse_lseek_in; encodes fuse_lseek_out', () => {
    expect(
      P.decodeFallocateIn(
        struct([
          [8, 3],
          [8, 4096],
          [8, 8192],
          [4, 3],
          [4, 0],
        ]),
        0,
      ),
    ).toEqual({ fh: 3, offset: 4096, length: 8192, mode: 3 });
    expect(
      P.decodeLseekIn(
        struct([
          [8, 3],
          [8, 12288],
          [4, 4],
          [4, 0],
        ]),
        0,
      ),
    ).toEqual({ fh: 3, offset: 12288, whence: 4 });
    const b = Buffer.alloc(8);
    expect(P.encodeLseekOut(b, 0, 2 ** 40)).toBe(8);
    expect(b.readBigUInt64LE(0)).toBe(2n ** 40n);
  });

  it('decodes forget, batch_forget and interrupt; they get no reply', () => {
    expect(P.decodeForgetIn(struct([[8, 3]]), 0)).toEqual({ nlookup: 3 });
    const batch = struct([
      [4, 2],
      [4, 0],
      [8, 5],
      [8, 1],
      [8, 6],
      [8, 2],
    ]);
    expect(P.decodeBatchForgetIn(batch, 0, batch.length)).toEqual([
      { nodeid: 5, nlookup: 1 },
      { nodeid: 6, nlookup: 2 },
    ]);
    expect(P.decodeInterruptIn(struct([[8, 1234]]), 0)).toEqual({ unique: 1234 });
    expect([P.Op.FORGET, P.Op.BATCH_FORGET, P.Op.INTERRUPT].map(P.expectsReply)).toEqual([false, false, false]);
    expect(P.expectsReply(P.Op.READ)).toBe(true);
    expect(P.opName(P.Op.LSEEK)).toBe('LSEEK');
    expect(P.opName(999)).toBe('op999');
  });
});
