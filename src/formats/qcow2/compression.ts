/**
 * Compressed clusters (qcow2.txt "Compressed Clusters Descriptor"): raw deflate (compression
 * type 0) or zstd (type 1, via the fzstd package: Node 20 has no zstd). The stored range is
 * rounded to sectors, so it usually holds the start of the next compressed cluster too: only
 * the first stream/frame is decoded.
 */
import * as zlib from 'node:zlib';
import { decompress } from 'fzstd';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import type { Inflater } from '../data-path';

export function decompressCluster(src: Buffer, clusterSize: number, type: number, into: Buffer): void {
  let out: Uint8Array;
  try {
    if (type === 0) {
      out = zlib.inflateRawSync(src, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } else {
      out = decompress(src.subarray(0, zstdFrameLength(src)), Buffer.alloc(clusterSize));
    }
  } catch (e) {
    if (e instanceof VdiskError) throw e;
    throw VdiskError.corrupt(`qcow2 compressed cluster does not decompress: ${(e as Error).message}`);
  }
  if (out.length < clusterSize)
    throw VdiskError.corrupt(`qcow2 compressed cluster decompresses to ${out.length} bytes, not ${clusterSize}`);
  into.set(out.subarray(0, clusterSize));
}

const ZSTD_MAGIC = 0xfd2fb528;

/** Byte length of the zstd frame at the start of `src` (RFC 8878 §3.1.1: header, blocks, checksum). */
export function zstdFrameLength(src: Buffer): number {
  const bad = (why: string): never => {
    throw VdiskError.corrupt(`qcow2 zstd cluster: ${why}`);
  };
  if (src.length < 6 || src.readUInt32LE(0) !== ZSTD_MAGIC) bad('no zstd frame');
  const fhd = src[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  let off = 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]! + (fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag]!);
  for (;;) {
    if (off + 3 > src.length) bad('frame runs past the stored bytes');
    const bh = src[off]! | (src[off + 1]! << 8) | (src[off + 2]! << 16);
    off += 3;
    const type = (bh >> 1) & 3;
    if (type === 3) bad('reserved block type');
    off += type === 1 ? 1 : bh >>> 3;
    if (bh & 1) break;
  }
  off += checksum ? 4 : 0;
  if (off > src.length) bad('frame runs past the stored bytes');
  return off;
}

/**
 * Compressed clusters of one image, inflated for the shared data path (a few kept by host
 * offset: reads of one cluster come in pieces).
 */
export class CompressedClusters implements Inflater {
  private readonly inflated = new Map<number, Buffer>();

  constructor(
    private readonly file: Pick<HostFile, 'read'>,
    private readonly clusterSize: number,
    private readonly type: number,
  ) {}

  async inflate(host: number, size: number): Promise<Buffer> {
    let cluster = this.inflated.get(host);
    if (cluster) return cluster;
    if (size > 2 * this.clusterSize + 512) throw VdiskError.corrupt(`qcow2 compressed cluster too large (${size} bytes)`);
    const src = Buffer.alloc(size);
    await this.file.read(src, host, 'data');
    cluster = Buffer.alloc(this.clusterSize);
    decompressCluster(src, this.clusterSize, this.type, cluster);
    this.inflated.set(host, cluster);
    if (this.inflated.size > 8) this.inflated.delete(this.inflated.keys().next().value as number);
    return cluster;
  }
}
