/**
 * Merger tuning (CLI: --merge-max, --merge-delay, --merge-mem, --no-merge).
 *
 * Defaults and why:
 * - maxBytes 1 MiB (DESIGN.md): big enough that qcow2/VMDK allocate many clusters/grains per
 *   request (the seeds' gain), small enough that one driver write stays well under fuse-native's
 *   per-operation timeout even on a slow disk.
 * - delayMs 5: with FUSE's worker threads the next write of a stream arrives within tens of
 *   microseconds, so 5 ms of silence means the writer paused (end of a dd/fio burst, a guest
 *   fs waiting on something). Longer holds more unsynced data and delays the idle flush of
 *   random writes for nothing; shorter would split streams on GC pauses and scheduler jitter.
 *   The flush fires between delayMs and 2*delayMs after the last write (one timer, re-armed
 *   with refresh(), no per-write timer churn).
 * - memCapBytes 64 MiB: 64 full extents; past it every pending extent is sent and the writer
 *   waits for the driver (back-pressure), so a slow image cannot make the process grow unbounded.
 *   Past 1 MiB of pending bytes, each write also sends one long-idle extent (the trickle in
 *   request-merger.ts), so scattered writes reach the driver steadily rather than in one burst.
 * - maxInflight 8 driver writes at once per image: enough to keep libuv's 4 I/O threads and a
 *   disk queue busy, few enough that a flush of a big random backlog does not flood the driver.
 */
import { VdiskError } from '../io/errors';

export interface MergerOptions {
  /** false = --no-merge: still page-aligned (read-modify-write), but every write goes straight to the driver. */
  merge?: boolean;
  /** A pending extent reaching this many bytes goes to the driver (--merge-max). */
  maxBytes?: number;
  /** Idle time after the last write before all pending extents go to the driver (--merge-delay). */
  delayMs?: number;
  /** Pending + in-flight bytes above which writers flush everything and wait (--merge-mem). */
  memCapBytes?: number;
  /** Concurrent driver writes per image. */
  maxInflight?: number;
  /** Pending bytes past which each write also sends one long-idle extent (the trickle; tests set it small). */
  trickleBytes?: number;
  /** Writes an extent must have been left alone for the trickle to send it. */
  trickleMinAge?: number;
  /** One-line log for deferred-write failures (default: stderr); debug 'vdiskfs:merge' logs them too. */
  warn?: (message: string) => void;
}

export const MERGE_DEFAULTS = {
  merge: true,
  maxBytes: 1 << 20,
  delayMs: 5,
  memCapBytes: 64 << 20,
  maxInflight: 8,
  trickleBytes: 1 << 20,
  trickleMinAge: 64,
} as const;

export interface ResolvedMergerOptions {
  merge: boolean;
  maxBytes: number;
  delayMs: number;
  memCapBytes: number;
  maxInflight: number;
  trickleBytes: number;
  trickleMinAge: number;
  warn: ((message: string) => void) | undefined;
}

export function resolveMergerOptions(o: MergerOptions = {}): ResolvedMergerOptions {
  const r: ResolvedMergerOptions = {
    merge: o.merge ?? MERGE_DEFAULTS.merge,
    maxBytes: o.maxBytes ?? MERGE_DEFAULTS.maxBytes,
    delayMs: o.delayMs ?? MERGE_DEFAULTS.delayMs,
    memCapBytes: o.memCapBytes ?? MERGE_DEFAULTS.memCapBytes,
    maxInflight: o.maxInflight ?? MERGE_DEFAULTS.maxInflight,
    trickleBytes: o.trickleBytes ?? MERGE_DEFAULTS.trickleBytes,
    trickleMinAge: o.trickleMinAge ?? MERGE_DEFAULTS.trickleMinAge,
    warn: o.warn,
  };
  const positive = (v: number): boolean => Number.isSafeInteger(v) && v > 0;
  if (!positive(r.maxBytes)) throw VdiskError.invalid(`merge max must be a positive integer, got ${r.maxBytes}`);
  if (!Number.isFinite(r.delayMs) || r.delayMs < 0) throw VdiskError.invalid(`merge delay must be >= 0 ms, got ${r.delayMs}`);
  if (!positive(r.memCapBytes)) throw VdiskError.invalid(`merge memory cap must be a positive integer, got ${r.memCapBytes}`);
  if (!positive(r.maxInflight)) throw VdiskError.invalid(`maxInflight must be a positive integer, got ${r.maxInflight}`);
  if (!positive(r.trickleMinAge)) throw VdiskError.invalid(`trickleMinAge must be a positive integer, got ${r.trickleMinAge}`);
  if (!positive(r.trickleBytes)) throw VdiskError.invalid(`trickleBytes must be a positive integer, got ${r.trickleBytes}`);
  return r;
}
