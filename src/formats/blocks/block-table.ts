/**
 * What a block-table format (VHD, VDI) tells the shared block engine (block-image.ts). The guest
 * disk is cut into blocks of one size; the format's table says, per block, whether it is stored
 * (and where), reads as zeros, or is absent (the parent's bytes, or zeros without a parent).
 *
 * The table owns the on-disk layout and the write order of its metadata; the engine owns the
 * bytes: it moves them through the shared data path, builds whole-block contents (COW from the
 * parent) and decides when table entries may be written (only after the data is durable).
 */
import type { HostFile } from '../../io/host-file';

/** The block is not stored: it reads from the parent, or as zeros without one. */
export const BLOCK_ABSENT = -1;
/** The block reads as zeros, whatever the parent holds (VDI's "zero" marker). */
export const BLOCK_ZERO = -2;

/** What a block to be stored holds: `data` from byte `at` of the block, zeros everywhere else. */
export interface BlockContent {
  block: number;
  at: number;
  data: Buffer;
}

export interface BlockTable {
  /** The image's host file (data and metadata live in one file for these formats). */
  readonly file: HostFile;
  readonly blockSize: number;
  readonly virtualSize: number;
  /** Host offset of the block's first data byte, or BLOCK_ABSENT / BLOCK_ZERO. */
  entry(block: number): number;
  /**
   * For a stored block whose sectors may live partly in the parent (a differencing VHD's sector
   * bitmap): how many bytes from `inBlock` (at most `max`) are all in this file (> 0), or all in
   * the parent (< 0, negated). Absent: every stored block is whole.
   */
  presence?(block: number, inBlock: number, max: number): number;
  /**
   * Stores the complete content of blocks that are absent, zero or only partly present, blocks
   * in ascending order. The data is written now (zeros too, unless the block lands past the end
   * of the file, where the host reads zeros anyway); the table entries change in memory (and
   * are written by writeTables, after a barrier). Called under the engine's table lock: one
   * call at a time, never during writeTables.
   */
  storeBlocks(blocks: BlockContent[]): Promise<void>;
  /**
   * Makes an absent block read as zeros without storing data, where the format can (VDI); false
   * when it cannot. In memory, like storeBlocks.
   */
  markZero?(block: number): boolean;
  /** Table entries changed since the last writeTables. */
  readonly dirty: boolean;
  /** Writes the changed entries. The engine has made the data they point at durable first. */
  writeTables(): Promise<void>;
}
