import { describe, expect, it } from 'vitest';
import { decodeInHeader, encodeOutHeader, IN_HEADER_SIZE, OUT_HEADER_SIZE, readU64, writeU64 } from '../../../../src/fuse/kernel/protocol';

/** A fuse_in_header built by hand, field by field as fuse.h lays it out. */
function inHeader(len: number, opcode: number, unique: bigint, nodeid: bigint): Buffer {
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeUInt32LE(opcode, 4);
  b.writeBigUInt64LE(unique, 8);
  b.writeBigUInt64LE(nodeid, 16);
  b.writeUInt32LE(1000, 24); // uid
  b.writeUInt32LE(100, 28); // gid
  b.writeUInt32LE(4242, 32); // pid
  return b;
}

describe('fuse_in_header / fuse_out_header', () => {
  it('has the kernel sizes', () => {
    expect(IN_HEADER_SIZE).toBe(40);
    expect(OUT_HEADER_SIZE).toBe(16);
  });

  it('decodes every field', () => {
    const h = decodeInHeader(inHeader(56, 15, 0x1_0000_0002n, 7n), 56);
    expect(h).toEqual({ len: 56, opcode: 15, unique: 0x1_0000_0002, nodeid: 7, uid: 1000, gid: 100, pid: 4242 });
  });

  it('refuses a short read and a length that disagrees', () => {
    expect(() => decodeInHeader(Buffer.alloc(20), 20)).toThrow(/short/);
    expect(() => decodeInHeader(inHeader(56, 15, 2n, 1n), 48)).toThrow(/says 56 bytes, read 48/);
  });

  it('encodes the reply header with a negative errno and the request id', () => {
    const b = Buffer.alloc(16);
    encodeOutHeader(b, 16, -2, 0x1_2345_6789);
    expect(b.readUInt32LE(0)).toBe(16);
    expect(b.readInt32LE(4)).toBe(-2);
    expect(b.readBigUInt64LE(8)).toBe(0x1_2345_6789n);
  });

  it('64-bit fields: exact up to 2^53, refused beyond', () => {
    const b = Buffer.alloc(8);
    writeU64(b, 2 ** 53 - 1, 0);
    expect(b.readBigUInt64LE(0)).toBe(2n ** 53n - 1n);
    expect(readU64(b, 0)).toBe(2 ** 53 - 1);
    b.writeBigUInt64LE(2n ** 53n);
    expect(() => readU64(b, 0)).toThrow(/2\^53/);
  });
});
