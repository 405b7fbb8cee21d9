/**
 * Compressed grains of a streamOptimized extent: read (behind a grain marker when the extent
 * has markers), inflated (zlib, or raw deflate as some writers produce) and padded to a grain.
 * A few recent grains are kept: a 4 KiB reader walks a 64 KiB grain 16 times.
 */
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { SECTOR } from './sparse-header';
import * as marker from './stream-marker';

const inflate = promisify(zlib.inflate);
const inflateRaw = promisify(zlib.inflateRaw);

export interface CompressedGrainsParts {
  file: HostFile;
  grainBytes: number;
  hasMarkers: boolean;
  fileName: string;
  warn: (message: string) => void;
  stats: { grainsDecompressed: number };
}

export class CompressedGrains {
  private readonly cache = new Map<number, Buffer>();
  /** A grain marker whose LBA disagrees with the grain table is reported once per extent. */
  private lbaWarned = false;

  constructor(private readonly p: CompressedGrainsParts) {}

  /** Inflates one compressed grain (a few recent ones are kept: a 4 KiB reader walks a grain 16 times). */
  async read(hostOffset: number, grainOffset: number): Promise<Buffer> {
    const hit = this.cache.get(hostOffset);
    if (hit) return hit;
    const G = this.p.grainBytes;
    const maxCompressed = G + (G >> 3) + 4096;
    let buf = Buffer.alloc(Math.min(maxCompressed + marker.GRAIN_MARKER_SIZE, 2 * G + 8192));
    await this.p.file.read(buf, hostOffset, 'data');
    let data: Buffer;
    if (this.p.hasMarkers) {
      const gm = marker.parseGrainMarker(buf, 0);
      // The grain table says where the grain is; the marker's LBA only repeats it. QEMU reads the
      // grain whatever the LBA says, so do we, and say so once.
      const want = BigInt(grainOffset / SECTOR);
      if (gm.lba !== want && !this.lbaWarned) {
        this.lbaWarned = true;
        this.p.warn(
          `${this.p.fileName}: grain marker at ${hostOffset} says LBA ${gm.lba}, the grain table says ${want}; reading it as the grain table says (as QEMU does)`,
        );
      }
      if (gm.size === 0 || gm.size > 2 * G + 4096)
        throw VdiskError.corrupt(`${this.p.fileName}: compressed grain at ${hostOffset} has invalid size ${gm.size}`);
      if (gm.size + marker.GRAIN_MARKER_SIZE > buf.length) {
        buf = Buffer.alloc(gm.size + marker.GRAIN_MARKER_SIZE);
        await this.p.file.read(buf, hostOffset, 'data');
      }
      data = buf.subarray(marker.GRAIN_MARKER_SIZE, marker.GRAIN_MARKER_SIZE + gm.size);
    } else {
      data = buf;
    }
    let out: Buffer;
    try {
      out = await inflate(data, { maxOutputLength: G, finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } catch {
      try {
        out = await inflateRaw(data, { maxOutputLength: G, finishFlush: zlib.constants.Z_SYNC_FLUSH });
      } catch (e) {
        throw VdiskError.corrupt(`${this.p.fileName}: cannot inflate grain at ${hostOffset}: ${(e as Error).message}`);
      }
    }
    if (out.length < G) out = Buffer.concat([out, Buffer.alloc(G - out.length)]);
    this.p.stats.grainsDecompressed++;
    this.cache.set(hostOffset, out);
    if (this.cache.size > 32) this.cache.delete(this.cache.keys().next().value as number);
    return out;
  }
}
