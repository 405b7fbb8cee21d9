/**
 * `--transport io-uring`: the kernel-protocol request loop (src/fuse/kernel/) with FUSE over
 * io_uring beside /dev/fuse. INIT asks for it; once answered, every queue's entries register and
 * the kernel sends requests through the ring, while FORGET and INTERRUPT stay on /dev/fuse.
 * Only where the kernel offers it: Linux 6.14+ with the fuse module's enable_uring set.
 */
import fs from 'node:fs';
import { VdiskError } from '../../io/errors';
import { MAX_WRITE } from '../kernel/protocol/negotiate';
import { startLoopTransport } from '../kernel/kernel-transport';
import type { Transport, TransportOptions } from '../transport';
import { FuseRing } from './fuse-ring';

const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring';
/** Requests each CPU's queue holds at once: the bench's deepest job (qd16) fits on one queue. */
export const RING_DEPTH = 16;

/** Why this kernel does not offer FUSE over io_uring, or undefined when it does. */
export function ioUringUnavailable(): string | undefined {
  let v: string;
  try {
    v = fs.readFileSync(ENABLE_URING, 'utf8').trim();
  } catch {
    return 'this kernel has no FUSE over io_uring (Linux 6.14+ built with CONFIG_FUSE_IO_URING)';
  }
  if (v !== 'Y' && v !== '1') return `FUSE over io_uring is off in this kernel (as root: echo Y > ${ENABLE_URING})`;
  return undefined;
}

/** CPUs the kernel may run on (its queue count: num_possible_cpus), from /sys/devices/system/cpu/possible ("0-3,6"). */
export function possibleCpus(list = fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8')): number {
  let n = 0;
  for (const part of list.trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    n += b === undefined ? 1 : b - a! + 1;
  }
  return n;
}

export async function startIoUringTransport(t: TransportOptions): Promise<Transport> {
  const why = ioUringUnavailable();
  if (why) throw VdiskError.unsupported(`--transport io-uring: ${why}`);
  const ring = new FuseRing({ queues: possibleCpus(), depth: RING_DEPTH, payloadSize: MAX_WRITE, warn: t.warn });
  return startLoopTransport(t, {
    name: 'io-uring',
    source: ring,
    ioUring: true,
    onInit: ({ ioUring }) => {
      if (ioUring) ring.register();
      else t.warn('the kernel did not offer FUSE over io_uring at INIT: serving through /dev/fuse');
    },
  });
}
