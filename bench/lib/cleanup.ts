/**
 * Everything the harness must undo (mounts, daemons, temp folders) is registered here and
 * undone in reverse order on normal exit, on failure and on SIGINT/SIGTERM/SIGHUP.
 */
type Undo = () => Promise<void> | void;

const undos: { name: string; fn: Undo }[] = [];
let running: Promise<void> | undefined;
let aborted = false;

/** True once a signal asked the run to stop: loops stop starting new work, no results are written. */
export function isAborted(): boolean {
  return aborted;
}

/** Throws when the run was interrupted (called before each new piece of work). */
export function checkAborted(): void {
  if (aborted) throw new Error('interrupted');
}

/** Registers an undo step; the returned function runs it now (once) and forgets it. */
export function onCleanup(name: string, fn: Undo): () => Promise<void> {
  const entry = { name, fn };
  undos.push(entry);
  return async () => {
    const i = undos.indexOf(entry);
    if (i < 0) return;
    undos.splice(i, 1);
    await fn();
  };
}

/** Runs every registered undo step, newest first; failures are logged, never thrown. */
export function cleanupAll(): Promise<void> {
  if (!running) {
    running = (async () => {
      while (undos.length > 0) {
        const { name, fn } = undos.pop()!;
        try {
          await fn();
        } catch (e) {
          process.stderr.write(`bench: cleanup of ${name} failed: ${(e as Error).message}\n`);
        }
      }
    })().finally(() => {
      running = undefined;
    });
  }
  return running;
}

/** Signals end the run after cleaning up; a second Ctrl-C while cleaning is ignored (cleanup must finish). */
export function installSignalHandlers(): void {
  let stopping = false;
  const stop = (sig: NodeJS.Signals, code: number) => {
    if (stopping) {
      process.stderr.write(`bench: ${sig} again, still cleaning up ...\n`);
      return;
    }
    stopping = true;
    aborted = true;
    process.stderr.write(`\nbench: ${sig}, cleaning up ...\n`);
    void cleanupAll().finally(() => process.exit(code));
  };
  process.on('SIGINT', () => stop('SIGINT', 130));
  process.on('SIGTERM', () => stop('SIGTERM', 143));
  process.on('SIGHUP', () => stop('SIGHUP', 129));
}
