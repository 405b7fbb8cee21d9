import createDebug from 'debug';
import { isVdiskError } from '../io/errors';

/** Warnings and errors: one line each, prefixed like any Unix tool. */
export function warn(message: string): void {
  process.stderr.write(`vdiskfs: ${message}\n`);
}

export function enableDebug(): void {
  createDebug.enable([process.env.DEBUG, 'vdiskfs:*'].filter(Boolean).join(','));
}

/**
 * A user mistake or an expected failure is one clear line; an unexpected bug also stays one
 * line unless --debug / DEBUG asks for the stack.
 */
export function reportFatal(e: unknown): number {
  const debugging = createDebug.enabled('vdiskfs:cli');
  if (isVdiskError(e)) {
    warn(e.message);
    if (debugging && e.cause) process.stderr.write(`${(e.cause as Error).stack ?? e.cause}\n`);
  } else {
    warn(`${(e as Error)?.message ?? e}`);
    if (debugging) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
    else process.stderr.write('vdiskfs: (this looks like a bug; run with --debug for details)\n');
  }
  return 1;
}
