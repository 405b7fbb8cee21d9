/**
 * The one place that knows the transports: a mount names one (`--transport`), this starts it.
 * Each lives in its own folder under src/fuse/ and serves the same operations core (src/fs/):
 *   kernel       our loop on /dev/fuse speaking the kernel protocol (src/fuse/kernel/), the default
 *   io-uring     the same loop with FUSE over io_uring ring queues beside /dev/fuse (src/fuse/io-uring/)
 *   fuse-native  libfuse 2.9 through fuse-native (src/fuse/fuse-native/), the measured baseline
 */
import { startKernelTransport } from '../fuse/kernel/kernel-transport';
import { startFuseNativeTransport } from '../fuse/fuse-native/transport';
import { startIoUringTransport } from '../fuse/io-uring/io-uring-transport';
import type { Transport, TransportName, TransportOptions } from '../fuse/transport';

const TRANSPORTS: Record<TransportName, (o: TransportOptions) => Promise<Transport>> = {
  kernel: startKernelTransport,
  'io-uring': startIoUringTransport,
  'fuse-native': startFuseNativeTransport,
};

export function startTransport(name: TransportName, opts: TransportOptions): Promise<Transport> {
  return TRANSPORTS[name](opts);
}
