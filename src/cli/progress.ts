/**
 * A status line on a terminal for work that may take a while (a check of a big image): nothing
 * for the first couple of seconds, then the elapsed time, rewritten in place and erased at the end.
 * Never on a pipe or a file, so scripts and JSON output stay clean.
 */
export function progressLine(what: string, stream: NodeJS.WriteStream = process.stderr): { done(): void } {
  if (!stream.isTTY) return { done: () => undefined };
  const afterMs = Number(process.env.VDISKFS_PROGRESS_AFTER_MS ?? 2000);
  const start = Date.now();
  let shown = false;
  let timer: NodeJS.Timeout | undefined;
  const draw = (): void => {
    shown = true;
    stream.write(`\r\x1b[K${what}... ${Math.round((Date.now() - start) / 1000)} s`);
    timer = setTimeout(draw, 1000);
    timer.unref();
  };
  timer = setTimeout(draw, afterMs);
  timer.unref();
  return {
    done() {
      clearTimeout(timer);
      if (shown) stream.write('\r\x1b[K');
    },
  };
}
