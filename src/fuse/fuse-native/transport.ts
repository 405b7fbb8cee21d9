/**
 * The fuse-native (libfuse 2.9) transport, `--transport fuse-native`: the measured baseline beside
 * our own kernel-protocol loop (../kernel/). The operations core answers through adapter.ts.
 */
import fs from 'node:fs';
import type { Operations } from 'fuse-native';
import { VdiskError } from '../../io/errors';
import type { FuseMountOptions } from '../mount-options';
import { makeFuseNativeOperations } from './adapter';
import type { Transport, TransportOptions } from '../transport';

/** FUSE write size: 128 KiB requests instead of 4 KiB (measured 22.7 → 265 MB/s for dd bs=128k). */
export const MAX_WRITE = 131072;

export interface SessionOptions {
  /** Extra `-o` options from the command line (allow_other, ...). */
  extraOptions: string[];
  debug: boolean;
  readOnly: boolean;
}

/**
 * Loads fuse-native lazily so that a machine without libfuse.so.2 gets one clear line
 * instead of a stack trace from the native loader.
 */
function loadFuse(): typeof import('fuse-native').default {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on use, see above
    return require('fuse-native') as typeof import('fuse-native').default;
  } catch (e) {
    const msg = (e as Error).message ?? '';
    if (/libfuse\.so/.test(msg)) throw new VdiskError('ENOENT', 'libfuse.so.2 is not installed (apt-get install libfuse2)');
    throw new VdiskError('EIO', `cannot load fuse-native: ${msg.split('\n')[0]}`);
  }
}

/**
 * One mounted FUSE session. fuse-native has no option for big_writes/max_write, so its option
 * builder is extended here; its own unmount runs `fusermount -uz`, which may be missing
 * (fuse3 ships fusermount3), so unmounting is ours too.
 */
export class FuseSession {
  private fuse: InstanceType<ReturnType<typeof loadFuse>> | undefined;

  constructor(
    readonly mountpoint: string,
    private readonly ops: Operations,
    private readonly opts: SessionOptions,
  ) {}

  async mount(): Promise<void> {
    if (!fs.existsSync('/dev/fuse')) throw new VdiskError('ENOENT', '/dev/fuse is missing (load the fuse module: modprobe fuse)');
    const Fuse = loadFuse();
    const debugFuse = this.opts.debug;
    const extra = [
      'big_writes',
      `max_write=${MAX_WRITE}`,
      'default_permissions',
      ...(this.opts.readOnly ? ['ro'] : []),
      ...this.opts.extraOptions,
    ];
    class VdiskFuse extends Fuse {
      protected override _fuseOptions(): string {
        const base = super._fuseOptions();
        // fuse-native turns on libfuse's own debug output whenever DEBUG contains '*'; only --debug-fuse should.
        const own = (base ? base.slice(2).split(',') : []).filter((o) => o !== 'debug' || debugFuse);
        const all = [...own, ...extra];
        return '-o' + all.join(',');
      }
    }
    const fuse = new VdiskFuse(this.mountpoint, this.ops, {
      // A flush of a large merger backlog or a big allocation may take long: never turn it into
      // a spurious ETIMEDOUT. Other operations keep a generous limit so a stuck request surfaces.
      timeout: { default: 10 * 60_000, flush: false, fsync: false, release: false, write: false, truncate: false, ftruncate: false },
      fsname: 'vdiskfs',
      subtype: 'vdiskfs',
      debug: this.opts.debug,
      entryTimeout: 1,
      attrTimeout: 1,
    });
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
    this.fuse = fuse;
  }
}

/** The fuse-native (libfuse 2.9) transport: `--transport fuse-native`, the measured baseline. */
export async function startFuseNativeTransport(t: TransportOptions): Promise<Transport> {
  const session = new FuseSession(t.mountpoint, makeFuseNativeOperations(t.core), {
    extraOptions: fuseNativeOptions(t.options),
    debug: t.debug,
    readOnly: t.readOnly,
  });
  await session.mount();
  return { name: 'fuse-native', ended: new Promise<void>(() => undefined), servesAfterDetach: false, report: () => undefined };
}

/** The checked -o options, in libfuse's words. */
function fuseNativeOptions(o: FuseMountOptions): string[] {
  return [...(o.allowOther ? ['allow_other'] : []), ...(o.nonempty ? ['nonempty'] : []), ...(o.readOnly ? ['ro'] : []), ...o.generic];
}
