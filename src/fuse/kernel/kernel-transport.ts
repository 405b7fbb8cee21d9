import * as fs from 'node:fs';
import { syncfsAsync } from '../../io/syscalls';
import type { Transport, TransportOptions } from '../transport';
import { AdaptivePoll, DEFAULT_POLL_MAX_US } from './adaptive-poll';
import { KernelAdapter } from './kernel-adapter';
import { mountKernel } from './kernel-mount';
import { SessionLoop } from './session-loop';

/** Mounts with the kernel protocol (the default transport) and starts serving at once. */
export async function startKernelTransport(t: TransportOptions): Promise<Transport> {
  const poll = new AdaptivePoll(t.pollMaxUs ?? DEFAULT_POLL_MAX_US); // a bad value fails before mounting
  const { fd } = await mountKernel(t.mountpoint, { ...t.options, readOnly: t.readOnly || t.options.readOnly });
  const loop = new SessionLoop(fd, poll);
  const adapter = new KernelAdapter(t.core, loop, { writebackCache: t.writebackCache, warn: t.warn, onDestroy: () => undefined });
  loop.onAbandonedReply = () => adapter.stats.abandonedReplies++;
  // mount(2) does not wait for INIT: the kernel queues it, and the loop answers it first.
  loop.start(adapter);
  const ended = loop.ended.then(() => fs.closeSync(fd));
  return {
    name: 'kernel',
    ended,
    servesAfterDetach: true,
    report: () =>
      adapter.stats.report() +
      `\n    loop: ${Object.entries(loop.counts)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')}`,
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
