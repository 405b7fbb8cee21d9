/**
 * THE WRITE ORDER of VHDX metadata ([MS-VHDX] 2.3: "metadata updates MUST go through the log").
 * BAT sectors changed in memory are committed in batches, each batch as:
 *   1. flush: the data blocks the new entries point at are durable first;
 *   2. a header with a fresh LogGuid (the log holds nothing else of that GUID), flush;
 *   3. one log entry at the start of the log carrying the 4 KiB sectors (FlushedFileOffset =
 *      LastFileOffset = the file size taken before step 1, which already covers the new
 *      blocks and which that flush made durable), flush;
 *   4. the same sectors at their places, flush;
 *   5. a header with a null LogGuid (the log is empty again), flush.
 * A power cut before 3 is durable leaves the old metadata (no valid entry of that GUID); after
 * it, QEMU or we replay the entry (idempotent). This is QEMU's cycle (vhdx_log_write_and_flush,
 * then vhdx_log_reset), so a crash state is one `qemu-img check -r all` replays.
 */
import type { HostFile } from '../../io/host-file';
import { allEnded } from '../../io/settle';
import { newGuid, NULL_GUID } from './guid';
import type { HeaderSlots } from './header-slots';
import { buildLogEntry, sectorsPerEntry } from './log-entry';

export interface DirtySectors {
  /** file offset of a 4 KiB metadata sector → its current bytes (copied when the batch starts). */
  snapshot(): Array<[number, Buffer, number]>;
  /** The sector at `offset` was committed as of `version`: clean unless changed since. */
  committed(offset: number, version: number): void;
}

export class MetadataLog {
  private sequence = 1n;
  private queue: Promise<void> = Promise.resolve();
  commits = 0;

  constructor(
    private readonly f: HostFile,
    private readonly slots: HeaderSlots,
    private readonly log: { offset: number; length: number },
    private readonly fileSize: () => number,
  ) {}

  /** Commits every dirty sector (in as many entries as the log needs); commits run one at a time. */
  commit(dirty: DirtySectors): Promise<void> {
    const run = this.queue.then(() => this.commitNow(dirty));
    this.queue = run.catch(() => {});
    return run;
  }

  private async commitNow(dirty: DirtySectors): Promise<void> {
    const all = dirty.snapshot();
    if (all.length === 0) {
      await this.f.datasync('flush'); // in-place writes only
      return;
    }
    const per = sectorsPerEntry(this.log.length);
    for (let i = 0; i < all.length; i += per) {
      const batch = all.slice(i, i + per);
      // The size now covers every block the batch points at (grown before its data was written);
      // taken before the flush, so it never names a growth that flush did not make durable
      // (QEMU refuses to replay an entry whose FlushedFileOffset is past the end of the file).
      const size = this.fileSize();
      await this.f.datasync('data');
      const logGuid = newGuid();
      await this.slots.update({ logGuid });
      await this.f.datasync('header');
      const entry = buildLogEntry({
        sequence: this.sequence++,
        tail: 0,
        logGuid,
        flushedFileOffset: size,
        lastFileOffset: size,
        sectors: batch.map(([off, data]) => [off, data]),
      });
      await this.f.write(entry, this.log.offset, 'log');
      await this.f.datasync('log');
      await allEnded(batch.map(([off, data]) => this.f.write(data, off, 'bat')));
      await this.f.datasync('bat');
      await this.slots.update({ logGuid: NULL_GUID });
      await this.f.datasync('header');
      for (const [off, , version] of batch) dirty.committed(off, version);
      this.commits++;
    }
  }

  /** Runs `fn` between commits (header updates of the first write). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.then(
      () => {},
      () => {},
    );
    return run;
  }
}
