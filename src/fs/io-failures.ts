/**
 * Failed I/O of the images, told to the daemon's log. A full or failing host disk must not show
 * only as EIO inside a guest or a `dd`: the person running the mount needs the cause, in one
 * line. The first failure of an image is told at once; after that at most one line every
 * REPEAT_MS, with how many more failed meanwhile (a failing disk fails every request).
 * Refusals that are the caller's own mistake (a read-only image, a bad argument) are not told:
 * the caller gets them as its errno.
 */
import { isVdiskError, type ErrorCode } from '../io/errors';

export const REPEAT_MS = 10_000;

/** Codes that are not the caller's mistake: the host, the image or vdiskfs failed. */
const TOLD = new Set<ErrorCode>(['EIO', 'ENOSPC', 'ECORRUPT']);

function told(e: unknown): boolean {
  return !isVdiskError(e) || TOLD.has(e.code);
}

export class IoFailureLog {
  private readonly last = new Map<string, { at: number; more: number }>();

  constructor(
    private readonly warn: (message: string) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Notes that `op` on `image` failed with `e` (told, or counted for the next line). */
  note(image: string, op: string, e: unknown): void {
    if (!told(e)) return;
    const t = this.now();
    const seen = this.last.get(image);
    if (seen && t - seen.at < REPEAT_MS) {
      seen.more++;
      return;
    }
    const more = seen?.more ? ` (and ${seen.more} more failed requests since the last message)` : '';
    this.last.set(image, { at: t, more: 0 });
    const message = e instanceof Error ? e.message : String(e);
    this.warn(`${image}: ${op} failed: ${message}${more}`);
  }
}
