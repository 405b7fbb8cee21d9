/**
 * A status line on a terminal for work that may take a while (check, map, create with
 * preallocation of a big image): nothing for the first couple of seconds, then the elapsed time
 * and, when the work reports it, how far it got — rewritten in place at most once a second and
 * erased at the end. Never on a pipe or a file, so scripts and JSON output stay clean.
 *
 * The work calls `update(fraction)` as it goes: much of it runs on the main thread without ever
 * yielding to a timer (cached tables, synchronous host reads), so the line is drawn from there
 * when it is due; the timer only covers the stretches that do wait.
 */
export interface Progress {
  /**
   * How much of the work is done, 0..1 (optional: the elapsed time alone is shown without it),
   * and what it is doing when that is worth saying (a check in several passes says why).
   */
  update(fraction: number, detail?: string): void;
  done(): void;
}

const QUIET: Progress = { update: () => undefined, done: () => undefined };

export function progressLine(what: string, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (!stream.isTTY) return QUIET;
  const afterMs = Number(process.env.VDISKFS_PROGRESS_AFTER_MS ?? 2000);
  const start = Date.now();
  let shown = false;
  let fraction: number | undefined;
  let detail: string | undefined;
  let nextDraw = start + afterMs;
  let timer: NodeJS.Timeout | undefined;
  const draw = (): void => {
    const now = Date.now();
    shown = true;
    nextDraw = now + 1000;
    const pct = fraction === undefined ? '' : ` (${Math.floor(fraction * 100)}%${detail ? `, ${detail}` : ''})`;
    stream.write(`\r\x1b[K${what}... ${Math.round((now - start) / 1000)} s${pct}`);
    arm();
  };
  const arm = (): void => {
    clearTimeout(timer);
    timer = setTimeout(draw, Math.max(0, nextDraw - Date.now()));
    timer.unref();
  };
  if (afterMs <= 0) draw();
  else arm();
  return {
    update(f: number, d?: string) {
      fraction = Math.min(1, Math.max(0, f));
      detail = d;
      if (Date.now() >= nextDraw) draw();
    },
    done() {
      clearTimeout(timer);
      if (shown) stream.write('\r\x1b[K');
    },
  };
}
