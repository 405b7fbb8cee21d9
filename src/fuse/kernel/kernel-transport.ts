import fs from 'node:fs';
import { syncfsAsync } from '../../io/syscalls/files';
import type { Transport, TransportOptions } from '../transport';
import { AdaptivePoll, DEFAULT_POLL_MAX_US } from './adaptive-poll';
import { KernelAdapter } from './kernel-adapter';
import { mountKernel } from './kernel-mount';
import { SessionLoop } from './session-loop';

import type { RequestSource } from './session-loop';

/** What a transport built on this loop adds: a second request source, and what to do at INIT. */
export interface LoopExtras {
  name: 'kernel' | 'io-uring';
  /** Made before mounting (so it can fail first); given the session's fd once mounted. */
  source?: RequestSource & { attach(devFd: number): void; close(): void };
  ioUring?: boolean;
  onInit?(agreed: { ioUring: boolean }): void;
}

/** Mounts with the kernel protocol (the default transport) and starts serving at once. */
export function startKernelTransport(t: TransportOptions): Promise<Transport> {
  return startLoopTransport(t, { name: 'kernel' });
}

/** Mounts, then serves with the request loop: /dev/fuse alone, or beside a second source (the io-uring transport's ring). */
export async function startLoopTransport(t: TransportOptions, x: LoopExtras): Promise<Transport> {
  const poll = new AdaptivePoll(t.pollMaxUs ?? DEFAULT_POLL_MAX_US); // a bad value fails before mounting
  let fd: number;
  try {
    ({ fd } = await mountKernel(t.mountpoint, { ...t.options, readOnly: t.readOnly || t.options.readOnly }));
  } catch (e) {
    x.source?.close();
    throw e;
  }
  x.source?.attach(fd);
  const loop = new SessionLoop(fd, poll, x.source);
  const adapter = new KernelAdapter(t.core, loop, {
    writebackCache: t.writebackCache,
    warn: t.warn,
    onDestroy: () => undefined,
    ioUring: x.ioUring,
    onInit: (agreed) => x.onInit?.(agreed),
  });
  loop.onAbandonedReply = () => adapter.stats.abandonedReplies++;
  // mount(2) does not wait for INIT: the kernel queues it, and the loop answers it first.
  loop.start(adapter);
  const ended = loop.ended.then(() => {
    x.source?.close();
    fs.closeSync(fd);
  });
  const counts = (c: Record<string, number>) =>
    Object.entries(c)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
  return {
    name: x.name,
    ended,
    servesAfterDetach: true,
    report: () =>
      adapter.stats.report() + `\n    loop: ${counts(loop.counts)}` + (x.source ? `\n    ring: ${counts(x.source.counts)}` : ''),
    // Opened on the thread pool and synced on a koffi thread: the loop answers what both cause.
    flushKernelCache: t.writebackCache
      ? async () => {
          const dir = await fs.promises.open(t.mountpoint, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
          try {
            await syncfsAsync(dir.fd);
          } finally {
            await dir.close();
          }
        }
      : undefined,
  };
}
