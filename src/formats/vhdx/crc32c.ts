/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every VHDX header,
 * region table and log entry ([MS-VHDX] 2.2.2: "CRC-32C hash over the entire 4 KB structure,
 * with the Checksum field taking the value of zero during the computation").
 */
const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** Continues a CRC-32C over `buf` (start with 0). */
export function crc32c(buf: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < buf.length; i++) c = TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** The VHDX checksum of `buf` with its 4-byte Checksum field at `at` read as zero. */
export function vhdxChecksum(buf: Buffer, at: number): number {
  let c = crc32c(buf.subarray(0, at));
  c = crc32c(Buffer.alloc(4), c);
  return crc32c(buf.subarray(at + 4), c);
}

/** Computes and stores the checksum field (little-endian) of a structure about to be written. */
export function sealChecksum(buf: Buffer, at: number): void {
  buf.writeUInt32LE(vhdxChecksum(buf, at), at);
}
