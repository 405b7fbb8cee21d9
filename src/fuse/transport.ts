import type { FuseMountOptions } from './mount-options';
import type { FsCore } from '../fs/operations-core';

export type TransportName = 'kernel' | 'io-uring' | 'fuse-native';

export interface TransportOptions {
  mountpoint: string;
  core: FsCore;
  options: FuseMountOptions;
  readOnly: boolean;
  debug: boolean;
  /** Kernel transport: let the kernel cache writes (WRITEBACK_CACHE). */
  writebackCache: boolean;
  /** Kernel transport: the longest busy-poll of /dev/fuse before sleeping, µs (0: never poll). */
  pollMaxUs?: number;
  warn: (message: string) => void;
}

/** A mounted FUSE session, whichever transport speaks to the kernel. */
export interface Transport {
  readonly name: TransportName;
  /**
   * Kernel transport: resolves when the kernel ends the session (unmounted and the last open
   * file closed). fuse-native: never (the mount watches mountinfo instead).
   */
  readonly ended: Promise<void>;
  /** Whether open files are still served after a lazy detach, until the last one closes. */
  readonly servesAfterDetach: boolean;
  /** What the transport saw, for --stats. */
  report(): string | undefined;
  /** Writeback cache: has the kernel send the writes it still holds (a stop flushes them too). */
  flushKernelCache?(): Promise<void>;
}
