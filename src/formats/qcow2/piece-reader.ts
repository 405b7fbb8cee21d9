/**
 * Moves the bytes of mapped pieces (mapping.ts) into a guest buffer: data clusters from the
 * data file, compressed clusters inflated (a few kept, reads of one cluster come in pieces),
 * zero clusters as zeros, unallocated ones from the backing image or zeros past its end.
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import type { Image } from '../types';
import { decompressCluster } from './compression';
import type { Piece } from './mapping';
import { KIND_COMPRESSED, KIND_NORMAL, KIND_UNALLOCATED, KIND_ZERO } from './table-entry';

export interface PieceReaderParts {
  file: HostFile;
  dataFile: HostFile;
  clusterSize: number;
  compressionType: number;
  backing?: Image;
}

export class PieceReader {
  private readonly cs: number;
  private decompressed = new Map<number, Buffer>(); // small cache of inflated clusters by host offset

  constructor(private readonly p: PieceReaderParts) {
    this.cs = p.clusterSize;
  }

  /** Fills `into` (guest range starting at `base`) from mapped pieces. */
  async read(pieces: Piece[], base: number, into: Buffer): Promise<void> {
    const io: Promise<unknown>[] = [];
    for (const p of pieces) {
      const dst = into.subarray(p.guest - base, p.guest - base + p.length);
      switch (p.kind) {
        case KIND_NORMAL:
          io.push(this.p.dataFile.read(dst, p.host, 'data'));
          break;
        case KIND_ZERO:
          dst.fill(0);
          break;
        case KIND_UNALLOCATED:
          io.push(this.readBacking(p.guest, dst));
          break;
        case KIND_COMPRESSED:
          io.push(this.readCompressed(p, dst));
          break;
      }
    }
    await Promise.all(io);
  }

  private async readBacking(guest: number, dst: Buffer): Promise<void> {
    const b = this.p.backing;
    const n = b ? Math.max(0, Math.min(dst.length, b.virtualSize - guest)) : 0;
    if (n > 0) await b!.read(guest, dst.subarray(0, n));
    if (n < dst.length) dst.fill(0, n);
  }

  private async readCompressed(p: Piece, dst: Buffer): Promise<void> {
    let cluster = this.decompressed.get(p.host);
    if (!cluster) {
      if (p.cSize > 2 * this.cs + 512) throw VdiskError.corrupt(`qcow2 compressed cluster too large (${p.cSize} bytes)`);
      const src = Buffer.alloc(p.cSize);
      await this.p.file.read(src, p.host, 'data');
      cluster = Buffer.alloc(this.cs);
      decompressCluster(src, this.cs, this.p.compressionType, cluster);
      this.decompressed.set(p.host, cluster);
      if (this.decompressed.size > 8) this.decompressed.delete(this.decompressed.keys().next().value as number);
    }
    cluster.copy(dst, 0, p.guest - p.cluster, p.guest - p.cluster + p.length);
  }
}
