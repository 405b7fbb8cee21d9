/**
 * A fixed VHD as a BlockTable: the disk's bytes lie at the start of the file, as they are, and
 * the footer follows them. Every block is stored; nothing is ever allocated or written but data.
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import type { BlockTable } from '../blocks/block-table';

/** Any size works; this one keeps the engine's mapping answers long. */
const BLOCK = 1 << 30;

export class FixedDisk implements BlockTable {
  readonly blockSize = BLOCK;
  readonly dirty = false;

  constructor(
    readonly file: HostFile,
    readonly virtualSize: number,
  ) {}

  entry(block: number): number {
    return block * BLOCK;
  }

  storeBlocks(): Promise<void> {
    return Promise.reject(VdiskError.io(`${this.file.path}: a fixed VHD has every block stored`));
  }

  writeTables(): Promise<void> {
    return Promise.resolve();
  }
}
