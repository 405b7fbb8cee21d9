/**
 * Finding the active log sequence and what replaying it writes ([MS-VHDX] 2.3.3). The log is
 * read whole (LogLength is a few MiB). A sequence is a run of valid entries, each following the
 * previous one in the circular log with SequenceNumber + 1; the active one is the sequence whose
 * head has the highest sequence number. It is replayed from its head's Tail entry when that
 * entry is in the sequence (the spec's rule), else from its first entry (what QEMU does: QEMU
 * does not keep Tail across its log resets), oldest first.
 */
import { VdiskError } from '../../io/errors';
import { LOG_SECTOR, readLogEntry, type LogEntry, type LogWrite } from './log-entry';

/** Checksummed bytes a search may spend (a hostile log of overlapping entries is refused, not slow). */
const SEARCH_BUDGET = 512 * 1024 * 1024;

export interface ReplayPlan {
  entries: LogEntry[];
  /** The writes in replay order. */
  writes: LogWrite[];
  /** The file must be at least this long after replay (the head's LastFileOffset). */
  lastFileOffset: number;
  /** The head's sequence number. */
  sequence: bigint;
}

/** The active sequence of `log` for `logGuid`, or undefined when there is none (nothing to replay). */
export function findActiveSequence(file: string, log: Buffer, logGuid: Buffer): LogEntry[] | undefined {
  const budget = { bytes: 0 };
  const memo = new Map<number, LogEntry | null>();
  const at = (pos: number): LogEntry | undefined => {
    let e = memo.get(pos);
    if (e === undefined) {
      e = readLogEntry(log, pos, logGuid, budget) ?? null;
      if (budget.bytes > SEARCH_BUDGET) throw VdiskError.corrupt(`${file}: log search gave up (entries overlap too much to be a log)`);
      memo.set(pos, e);
    }
    return e ?? undefined;
  };
  let best: LogEntry[] | undefined;
  for (let start = 0; start < log.length; start += LOG_SECTOR) {
    const first = at(start);
    if (!first) continue;
    const seq = [first];
    let used = first.length;
    for (;;) {
      const prev = seq[seq.length - 1]!;
      const next = at((prev.pos + prev.length) % log.length);
      if (!next || next.sequence !== prev.sequence + 1n || used + next.length > log.length) break;
      seq.push(next);
      used += next.length;
    }
    if (!best || seq[seq.length - 1]!.sequence > best[best.length - 1]!.sequence) best = seq;
  }
  if (!best) return undefined;
  const head = best[best.length - 1]!;
  const from = best.findIndex((e) => e.pos === head.tail);
  return from > 0 ? best.slice(from) : best;
}

/**
 * What replaying the active sequence writes, checked against the file: every write inside
 * [0, max(file size, LastFileOffset)), none into the log itself, and "FlushedFileOffset MUST not
 * be greater than the file size" (else the file was truncated after the entry was written).
 */
export function replayPlan(file: string, entries: LogEntry[], fileSize: number, log: { offset: number; length: number }): ReplayPlan {
  const head = entries[entries.length - 1]!;
  const writes: LogWrite[] = [];
  for (const e of entries) {
    if (e.flushedFileOffset > fileSize)
      throw VdiskError.corrupt(
        `${file}: log entry ${e.sequence} says the file was ${e.flushedFileOffset} bytes, it is ${fileSize} (truncated?)`,
      );
    if (e.lastFileOffset > fileSize + 64 * 1024 * 1024 * 1024)
      throw VdiskError.corrupt(`${file}: log entry ${e.sequence} would grow the file to ${e.lastFileOffset} bytes`);
    const end = Math.max(fileSize, e.lastFileOffset);
    for (const w of e.writes) {
      if (w.offset + w.length > end)
        throw VdiskError.corrupt(`${file}: log entry ${e.sequence} writes ${w.offset}+${w.length}, past the end of the file (${end})`);
      if (w.offset < log.offset + log.length && log.offset < w.offset + w.length)
        throw VdiskError.corrupt(`${file}: log entry ${e.sequence} writes ${w.offset}+${w.length} into the log itself`);
      writes.push(w);
    }
  }
  return { entries, writes, lastFileOffset: head.lastFileOffset, sequence: head.sequence };
}

/** Replayed bytes kept in memory for a read-only open: consulted over the file's own bytes. */
export class ReplayOverlay {
  constructor(private readonly writes: LogWrite[]) {}

  get size(): number {
    return this.writes.length;
  }

  /** Patches `buf`, read from the file at `pos`, with every replayed write that overlaps it, in order. */
  apply(buf: Buffer, pos: number): void {
    const end = pos + buf.length;
    for (const w of this.writes) {
      const a = Math.max(pos, w.offset);
      const b = Math.min(end, w.offset + w.length);
      if (a >= b) continue;
      if (w.data) w.data.copy(buf, a - pos, a - w.offset, b - w.offset);
      else buf.fill(0, a - pos, b - pos);
    }
  }

  /** True when a replayed write lands in [pos, pos+len) (payload data must not be read around it). */
  touches(pos: number, len: number): boolean {
    return this.writes.some((w) => w.offset < pos + len && pos < w.offset + w.length);
  }
}
