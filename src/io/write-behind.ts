/**
 * Write-behind: the host starts writing a stream's bytes to its disk soon after they are written,
 * so the next flush waits for the tail of the stream, not for all of it.
 *
 * Linux leaves written pages dirty in its page cache until they are 30 s old or a tenth of the
 * memory is dirty. A guest (or fio's end_fsync, or `dd conv=fsync`) that writes 512 MiB and then
 * flushes waits, inside that flush, for all 512 MiB to go to the disk: 250-300 ms of the 0.7 s
 * a 128 KiB sequential write job took on a qcow2 view here. Asking the kernel to start writeback
 * of every 8 MiB of a stream as it is written (sync_file_range SYNC_FILE_RANGE_WRITE) lets the
 * disk work while the guest writes on; that flush then took 20 ms, and the job 780 -> 1130 MB/s.
 * PostgreSQL (`*_flush_after`) and RocksDB (`bytes_per_sync`) do the same for the same reason.
 *
 * What it does not change:
 * - Durability and ordering. SYNC_FILE_RANGE_WRITE only starts writeback and promises nothing:
 *   every barrier the drivers rely on (data before the L2 entry pointing to it, refcount blocks
 *   before L2 tables) is still an fdatasync, and a flush is still one.
 * - Errors. Without SYNC_FILE_RANGE_WAIT_AFTER the call does not consume the file's writeback
 *   error: the next fdatasync still reports it. A failing call only turns write-behind off for
 *   that file (it is a hint).
 * - Small writes. Only large writes count (a merged stream's extents, above STREAM_WRITE_MIN):
 *   scattered small ones (metadata tables, random guest writes) are often written again soon,
 *   and writing them back early would write them twice.
 */
import createDebug from 'debug';
import { startWriteback } from './syscalls/files';

const log = createDebug('vdiskfs:io');

const DEFAULT_BYTES = 8 << 20;

/** VDISKFS_WRITE_BEHIND in bytes (0 turns write-behind off); anything but a whole number keeps the default. */
export function bytesFromEnv(value: string | undefined): number {
  if (value === undefined || !/^\d+$/.test(value.trim())) return DEFAULT_BYTES;
  const n = Number(value.trim());
  return Number.isSafeInteger(n) ? n : DEFAULT_BYTES;
}

/** Bytes of large writes after which their range goes to writeback (VDISKFS_WRITE_BEHIND; 0 turns it off). */
export const WRITE_BEHIND_BYTES = bytesFromEnv(process.env.VDISKFS_WRITE_BEHIND);

/**
 * Calls in flight in the whole process: one. Each holds a thread of the pool that large writes,
 * fdatasync and the idle FUSE loop's wait also use, and can wait for room in a disk's queue;
 * a file that finds the slot taken gathers its writes into its next call.
 */
let callsInFlight = 0;
const MAX_CALLS_IN_FLIGHT = 1;

/** A write at least this large is part of a stream (the merger sends streams in extents of up to 1 MiB). */
export const STREAM_WRITE_MIN = 256 * 1024;

export class WriteBehind {
  /** The range the large writes since the last start of writeback covered. */
  private lo = Number.POSITIVE_INFINITY;
  private hi = 0;
  private bytes = 0;
  private running: Promise<void> | undefined;
  private off = WRITE_BEHIND_BYTES <= 0;

  constructor(
    private readonly fd: number,
    private readonly path: string,
    private readonly started: (offset: number, length: number) => void,
    private readonly every = WRITE_BEHIND_BYTES,
  ) {}

  /** After a write of `length` bytes at `pos` completed. */
  wrote(pos: number, length: number): void {
    if (this.off || length < STREAM_WRITE_MIN) return;
    if (pos < this.lo) this.lo = pos;
    if (pos + length > this.hi) this.hi = pos + length;
    this.bytes += length;
    // One call at a time per file: when the disk is slower than the writer, the next call covers
    // everything written meanwhile instead of queueing behind this one.
    if (this.bytes < this.every || this.running !== undefined || callsInFlight >= MAX_CALLS_IN_FLIGHT) return;
    const offset = this.lo;
    const length_ = this.hi - this.lo;
    this.lo = Number.POSITIVE_INFINITY;
    this.hi = 0;
    this.bytes = 0;
    this.started(offset, length_);
    callsInFlight++;
    this.running = startWriteback(this.fd, offset, length_).then(
      () => {
        callsInFlight--;
        this.running = undefined;
      },
      (e: unknown) => {
        callsInFlight--;
        this.running = undefined;
        this.off = true;
        log('write-behind off for %s: %s', this.path, (e as Error).message);
      },
    );
  }

  /** Resolves once no call is running. */
  async settled(): Promise<void> {
    await this.running;
  }

  /**
   * Before the descriptor closes: no new call starts (a write still in flight may complete
   * after close), and the one running ends first, so none can reach a reused fd.
   */
  async stop(): Promise<void> {
    this.off = true;
    await this.running;
  }
}
