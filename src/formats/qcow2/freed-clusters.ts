/**
 * Freed host clusters back to the allocator (split out of qcow2-image.ts). A cluster whose
 * refcount reached 0 may still be the old mapping of a read or write that runs without the image
 * lock; it is punched (reads as zeros, space back to the host) and handed to the allocator only
 * once every such lock-free I/O started before has finished. This file tracks that I/O.
 */
import createDebug from 'debug';
import type { HostFile } from '../../io/host-file';
import type { MetadataCache } from './metadata-cache';
import type { Refcounts } from './refcounts';

const log = createDebug('vdiskfs:qcow2');

export class FreedClusters {
  private readonly lockFree = new Set<Promise<void>>();

  constructor(
    private readonly file: HostFile,
    private readonly dataFile: HostFile,
    private readonly clusterSize: number,
    private readonly cache: MetadataCache,
    private readonly refcounts: () => Refcounts,
    private readonly closed: () => boolean,
  ) {}

  /** Tracks I/O that runs without the image lock (see recycle). */
  lockFreeIo<T>(p: Promise<T>): Promise<T> {
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.lockFree.add(settled);
    void settled.then(() => this.lockFree.delete(settled));
    return p;
  }

  /** Applies the queued frees (under the image lock), writes the zeroed refcounts, recycles what reached 0. */
  async applyFrees(): Promise<void> {
    const rc = this.refcounts();
    if (!rc.hasPendingFrees) return;
    const zeroed = await rc.applyFrees();
    await this.cache.flush();
    this.recycle(zeroed);
  }

  /**
   * Clusters whose refcount reached 0: punched (reads as zeros, space back to the host) and
   * handed to the allocator, once every lock-free read or write that may have looked up their
   * old mapping has finished. Without punching, they stay unused (new clusters must read as zeros).
   */
  recycle(runs: { host: number; length: number }[]): void {
    if (runs.length === 0 || this.dataFile !== this.file) return;
    void Promise.allSettled([...this.lockFree]).then(() => {
      if (this.closed()) return;
      for (const r of runs) {
        try {
          if (!this.file.punchHole(r.host, r.length, 'discard')) continue;
        } catch (e) {
          log('punching freed clusters at %d (+%d) failed: %s', r.host, r.length, (e as Error).message);
          continue;
        }
        this.refcounts().addReusable(r.host / this.clusterSize, r.length / this.clusterSize);
      }
    });
  }
}
