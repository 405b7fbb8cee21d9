import { describe, expect, it } from 'vitest';
import {
  ATTR_OUT_SIZE,
  decodeGetattrIn,
  decodeName,
  encodeAttrOut,
  encodeEntryOut,
  ENTRY_OUT_SIZE,
  type Attr,
} from '../../../../src/fuse/kernel/protocol';

const attr: Attr = {
  ino: 5,
  size: 2 ** 40 + 3,
  blocks: 2048,
  atimeMs: 1_700_000_000_250,
  mtimeMs: 1_700_000_001_500,
  ctimeMs: 1_700_000_002_000,
  mode: 0o100644,
  nlink: 1,
  uid: 1000,
  gid: 100,
  blksize: 4096,
};

/** fuse_attr at `off`, read back field by field (fuse.h order). */
function readAttr(b: Buffer, off: number) {
  return {
    ino: b.readBigUInt64LE(off),
    size: b.readBigUInt64LE(off + 8),
    blocks: b.readBigUInt64LE(off + 16),
    atime: b.readBigUInt64LE(off + 24),
    mtime: b.readBigUInt64LE(off + 32),
    ctime: b.readBigUInt64LE(off + 40),
    atimensec: b.readUInt32LE(off + 48),
    mtimensec: b.readUInt32LE(off + 52),
    ctimensec: b.readUInt32LE(off + 56),
    mode: b.readUInt32LE(off + 60),
    nlink: b.readUInt32LE(off + 64),
    uid: b.readUInt32LE(off + 68),
    gid: b.readUInt32LE(off + 72),
    rdev: b.readUInt32LE(off + 76),
    blksize: b.readUInt32LE(off + 80),
    flags: b.readUInt32LE(off + 84),
  };
}

const expected = {
  ino: 5n,
  size: 2n ** 40n + 3n,
  blocks: 2048n,
  atime: 1_700_000_000n,
  mtime: 1_700_000_001n,
  ctime: 1_700_000_002n,
  atimensec: 250_000_000,
  mtimensec: 500_000_000,
  ctimensec: 0,
  mode: 0o100644,
  nlink: 1,
  uid: 1000,
  gid: 100,
  rdev: 0,
  blksize: 4096,
  flags: 0,
};

describe('entry and attr replies', () => {
  it('fuse_entry_out: node id, generation, validities, then fuse_attr (128 bytes)', () => {
    const b = Buffer.alloc(16 + ENTRY_OUT_SIZE, 0xee);
    expect(encodeEntryOut(b, 16, 9, 1, 1.5, attr)).toBe(128);
    expect(b.readBigUInt64LE(16)).toBe(9n);
    expect(b.readBigUInt64LE(24)).toBe(0n);
    expect(b.readBigUInt64LE(32)).toBe(1n); // entry_valid
    expect(b.readBigUInt64LE(40)).toBe(1n); // attr_valid
    expect(b.readUInt32LE(48)).toBe(0); // entry_valid_nsec
    expect(b.readUInt32LE(52)).toBe(500_000_000); // attr_valid_nsec
    expect(readAttr(b, 56)).toEqual(expected);
  });

  it('fuse_attr_out: validity, dummy, then fuse_attr (104 bytes)', () => {
    const b = Buffer.alloc(16 + ATTR_OUT_SIZE, 0xee);
    expect(encodeAttrOut(b, 16, 1, attr)).toBe(104);
    expect(b.readBigUInt64LE(16)).toBe(1n);
    expect(b.readUInt32LE(24)).toBe(0);
    expect(b.readUInt32LE(28)).toBe(0);
    expect(readAttr(b, 32)).toEqual(expected);
  });

  it('fuse_getattr_in: fh only with FUSE_GETATTR_FH', () => {
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(77n, 8);
    expect(decodeGetattrIn(b, 0, 16).fh).toBeUndefined();
    b.writeUInt32LE(1, 0);
    expect(decodeGetattrIn(b, 0, 16).fh).toBe(77);
  });

  it('LOOKUP names end at their NUL and are UTF-8', () => {
    const b = Buffer.concat([Buffer.alloc(40), Buffer.from('dïsk.qcow2.raw\0', 'utf8')]);
    expect(decodeName(b, 40, b.length)).toBe('dïsk.qcow2.raw');
  });
});
