/**
 * Compressed clusters (qcow2.txt "Compressed Clusters Descriptor"): raw deflate (compression
 * type 0) or zstd (type 1, via the fzstd package: Node 20 has no zstd). The stored bytes may run
 * past the end of the stream (sector padding), so only one cluster of output is taken.
 */
import * as zlib from 'node:zlib';
import { Decompress } from 'fzstd';
import { VdiskError } from '../../io/errors';

export function decompressCluster(src: Buffer, clusterSize: number, type: number, into: Buffer): void {
  let out: Buffer;
  try {
    if (type === 0) {
      out = zlib.inflateRawSync(src, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } else {
      out = zstdCluster(src, clusterSize);
    }
  } catch (e) {
    throw VdiskError.corrupt(`qcow2 compressed cluster does not decompress: ${(e as Error).message}`);
  }
  if (out.length < clusterSize) throw VdiskError.corrupt(`qcow2 compressed cluster decompresses to ${out.length} bytes, not ${clusterSize}`);
  out.copy(into, 0, 0, clusterSize);
}

/** Streams frames until one cluster is out; trailing padding after the frame is ignored. */
function zstdCluster(src: Buffer, clusterSize: number): Buffer {
  const chunks: Uint8Array[] = [];
  let got = 0;
  const d = new Decompress((chunk) => {
    chunks.push(chunk);
    got += chunk.length;
  });
  // Feed in pieces so we can stop as soon as a cluster is complete (padding is not a frame).
  const step = 4096;
  for (let off = 0; off < src.length && got < clusterSize; off += step) {
    const end = Math.min(src.length, off + step);
    try {
      d.push(src.subarray(off, end), end === src.length);
    } catch (e) {
      if (got < clusterSize) throw e; // padding after a complete frame is not an error
    }
  }
  return Buffer.concat(chunks.map((c) => Buffer.from(c.buffer, c.byteOffset, c.length)));
}
