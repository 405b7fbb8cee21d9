import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { checkMountArguments, mountImages } from '../../mount/mount';
import { withAllowOutside } from '../allow-outside';
import { tuningFromOptions } from '../tuning';
import { VdiskError } from '../../io/errors';
import { parseSize } from '../size';
import { enableDebug, reportFatal, warn } from '../output';
import { defaultLogFile, pidFileFor } from '../pidfile';
import { reportBackgroundMount, servedAlready, writeMountRecord } from '../mount-report';
import { isOurMount } from '../../fuse/mountinfo';
import { DEFAULT_POLL_MAX_US } from '../../fuse/kernel/adaptive-poll';
import { missingDaemonFlags } from '../daemon-heap';

interface MountArgs {
  images: string;
  mountpoint: string;
  foreground: boolean;
  'read-only': boolean;
  'include-raw': boolean;
  debug: boolean;
  o?: string | string[];
  merge: boolean;
  'merge-max': string;
  'merge-delay': number;
  'multi-alloc': boolean;
  'cache-size'?: string;
  'null-driver': boolean;
  stats: boolean;
  'log-file'?: string;
  'daemon-child': boolean;
  'if-not-mounted': boolean;
  transport: 'kernel' | 'io-uring' | 'fuse-native';
  'writeback-cache': boolean;
  'poll-max-us': number;
  partitions: boolean;
  'allow-outside': string[];
}

export const mountCommand: CommandModule<object, MountArgs> = {
  command: 'mount <images> <mountpoint>',
  describe: 'show every .qcow2/.vmdk/.vhdx/.vhd/.vdi under <images> as a raw file under <mountpoint>',
  builder: (y: Argv) =>
    withAllowOutside(y)
      .positional('images', { type: 'string', demandOption: true, describe: 'folder holding the images' })
      .positional('mountpoint', { type: 'string', demandOption: true, describe: 'empty folder to mount on' })
      .option('foreground', {
        alias: 'f',
        type: 'boolean',
        default: false,
        describe: 'stay in the foreground (logs to stderr; Ctrl-C unmounts)',
      })
      .option('read-only', { alias: 'r', type: 'boolean', default: false, describe: 'every view read-only' })
      .option('include-raw', { type: 'boolean', default: false, describe: 'also show .img/.raw files' })
      .option('debug', { type: 'boolean', default: false, describe: 'log what each layer does (same as DEBUG=vdiskfs:*)' })
      .option('o', { type: 'string', requiresArg: true, describe: 'FUSE mount options, e.g. -o allow_other (repeatable)' })
      .option('merge', { type: 'boolean', default: true, describe: 'merge small writes (--no-merge sends each to the driver)' })
      .option('merge-max', { type: 'string', default: '1M', describe: 'pending extent size that goes to the driver' })
      .option('merge-delay', { type: 'number', default: 5, describe: 'idle milliseconds before pending writes go to the driver' })
      .option('multi-alloc', {
        type: 'boolean',
        default: true,
        describe: 'VMDK: allocate all grains of a request at once (--no-multi-alloc: grain by grain)',
      })
      .option('cache-size', { type: 'string', describe: 'qcow2 metadata cache size per image (e.g. 32M)' })
      .option('stats', {
        type: 'boolean',
        default: false,
        describe: "at unmount, print each image's counters (host I/O, metadata writes, cache hits, merged writes)",
      })
      .option('log-file', {
        type: 'string',
        describe: 'where a background mount logs (default: a file in /tmp named after the mountpoint)',
      })
      .option('transport', {
        choices: ['kernel', 'io-uring', 'fuse-native'] as const,
        default: 'kernel' as const,
        describe:
          'who speaks FUSE: our kernel-protocol loop, the same with FUSE over io_uring (Linux 6.14+, enable_uring), or fuse-native (libfuse 2.9, the old baseline)',
      })
      .option('partitions', {
        type: 'boolean',
        default: true,
        describe: 'show each partition of a disk as a file beside it, disk.qcow2.p1.raw (--no-partitions: off)',
      })
      .option('writeback-cache', {
        type: 'boolean',
        default: false,
        describe:
          'kernel transport: the kernel caches small buffered writes and sends them merged (3-8x faster 4k psync writes), but then owns file sizes (a partition file whose table changed keeps its old size), and every handle, writers too, goes through the page cache',
      })
      .option('poll-max-us', {
        type: 'number',
        default: DEFAULT_POLL_MAX_US,
        describe:
          "kernel transport: busy-poll /dev/fuse up to this many µs after a reply before sleeping, adapted to the client (like QEMU's poll-max-ns); 0: never",
      })
      .option('null-driver', { type: 'boolean', default: false, hidden: true })
      .option('daemon-child', { type: 'boolean', default: false, hidden: true })
      .option('if-not-mounted', { type: 'boolean', default: false, hidden: true }) // mount.vdiskfs: `mount -a` again is a quiet success
      .example('$0 mount ./images /mnt/raw', 'mount in the background; unmount with: vdiskfs unmount /mnt/raw')
      .example('$0 mount -f --read-only ./evidence /mnt/ro', 'forensics: read-only, in the foreground'),
  handler: async (argv) => {
    if (argv.debug) enableDebug();
    if (argv['if-not-mounted'] && !argv['daemon-child'] && servedAlready(argv.images, argv.mountpoint, isOurMount)) return;
    if (argv.foreground || argv['daemon-child']) {
      // fuse-native keeps a libuv handle referenced after unmount: exit explicitly once every
      // image is flushed and closed.
      process.exit(await runMount(argv));
    }
    process.exitCode = await startDaemon(argv);
  },
};

/** What the daemon tells the command that started it, once it serves or has failed. */
interface DaemonReady {
  ok: boolean;
  message?: string;
  /** Disk views shown and image files left out (absent when the count failed). */
  shown?: number;
  leftOut?: number;
}

/** Serves the mount in this process until unmounted or signalled; returns the exit code. */
async function runMount(argv: MountArgs): Promise<number> {
  const child = argv['daemon-child'];
  const ready = (msg: DaemonReady) => {
    if (child && process.send) {
      process.send(msg);
      process.disconnect?.();
    }
  };
  // One handler for the whole life of the process: Ctrl-C or SIGTERM while mounting is noted
  // (the mount is finished, then taken down again at once); afterwards it shuts the mount down.
  // Never removed and re-added: Node drops a signal that is queued but not yet dispatched when
  // the last listener goes, so swapping handlers lost a Ctrl-C that came during mount(2).
  const state: { early?: NodeJS.Signals; serving?: { shutdown(why: string): Promise<void> } } = {};
  const onSignal = (sig: NodeJS.Signals) => {
    if (state.serving) void state.serving.shutdown(sig);
    else state.early ??= sig;
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  let mounted;
  try {
    mounted = await mountImages({
      images: argv.images,
      mountpoint: argv.mountpoint,
      readOnly: argv['read-only'],
      includeRaw: argv['include-raw'],
      debug: false,
      fuseOptions: ([] as string[])
        .concat(argv.o ?? [])
        .flatMap((o) => o.split(','))
        .filter(Boolean),
      nullDriver: argv['null-driver'],
      merger: { merge: argv.merge, maxBytes: parseSize(argv['merge-max'], '--merge-max'), delayMs: argv['merge-delay'] },
      tuning: tuningFromOptions(argv['cache-size'] ? parseSize(argv['cache-size'], '--cache-size') : undefined, argv['multi-alloc']),
      allowOutside: argv['allow-outside'],
      stats: argv.stats,
      transport: argv.transport,
      writebackCache: argv['writeback-cache'],
      pollMaxUs: argv['poll-max-us'],
      partitions: argv.partitions,
      warn,
    });
  } catch (e) {
    const err =
      e instanceof Error && !(e instanceof VdiskError) && /fuse failed|Mountpoint/.test(e.message)
        ? new VdiskError('EIO', `cannot mount on ${argv.mountpoint}: ${e.message}`)
        : e;
    ready({ ok: false, message: (err as Error).message });
    return reportFatal(err);
  }
  const early = state.early;
  if (early) {
    await mounted.shutdown(early);
    await mounted.finished;
    ready({ ok: false, message: `interrupted by ${early} while mounting; nothing is left mounted` });
    return reportFatal(new VdiskError('EIO', `interrupted by ${early} while mounting; nothing is left mounted`));
  }
  const pidFile = pidFileFor(argv.mountpoint);
  fs.writeFileSync(pidFile, `${process.pid}\n`);
  state.serving = mounted;
  // The background mount's summary line, counted here rather than by the parent walking the
  // mount: no FUSE round trip per entry (#20: 10,000 images).
  if (child) ready({ ok: true, ...(await mounted.census().catch(() => ({}))) });
  const { errors } = await mounted.finished;
  fs.rmSync(pidFile, { force: true });
  return errors.length ? 1 : 0;
}

/** Like sshfs: returns once the mount is ready, and keeps serving from a detached child. */
async function startDaemon(argv: MountArgs): Promise<number> {
  checkMountArguments(path.resolve(argv.images), path.resolve(argv.mountpoint), ([] as string[]).concat(argv.o ?? []), warn);
  const logFile = argv['log-file'] ?? defaultLogFile(argv.mountpoint);
  const log = fs.openSync(logFile, 'a');
  const logStart = fs.fstatSync(log).size;
  const args = process.argv.slice(1).filter((a) => a !== '--daemon-child');
  // Ctrl-C before this command returns (while the child starts, and while we print what it
  // shows): the child (its own session, so the terminal's signal misses it) is told too, takes
  // down what it mounted and exits; nothing stays mounted. The handlers come before the spawn:
  // a signal during fork/exec (milliseconds on a loaded machine) would otherwise kill this
  // process with its default action and orphan a child that goes on to mount.
  let interrupted = false;
  let childExited = false;
  const started: { child?: ChildProcess } = {};
  const forward = (sig: NodeJS.Signals) => {
    interrupted = true;
    started.child?.kill(sig); // dispatched from the event loop, so after spawn() returned
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const sig of signals) process.on(sig, forward);
  const nodeArgs = [...missingDaemonFlags(process.execArgv), ...process.execArgv]; // daemon-heap.ts
  const child = spawn(process.execPath, [...nodeArgs, ...args, '--daemon-child'], {
    detached: true,
    stdio: ['ignore', log, log, 'ipc'],
    env: process.env,
  });
  started.child = child;
  fs.closeSync(log);
  const childGone = new Promise<void>((res) =>
    child.once('exit', () => {
      childExited = true;
      res();
    }),
  );
  const result = await new Promise<DaemonReady>((resolve) => {
    child.once('message', (m) => resolve(m as DaemonReady));
    child.once('exit', (code) => resolve({ ok: false, message: `mount process exited (code ${code}); see ${logFile}` }));
    child.once('error', (e) => resolve({ ok: false, message: e.message }));
  });
  if (result.ok && !interrupted) {
    writeMountRecord(argv.mountpoint, { logFile, stats: argv.stats, images: fs.realpathSync(argv.images) });
    reportBackgroundMount(path.resolve(argv.mountpoint), logFile, logStart, result);
  }
  if (interrupted && !childExited) await childGone; // the child unmounts and exits on the forwarded signal
  // From here the mount is this command's result: a Ctrl-C in its last moments is ignored rather
  // than killing it half-way (the handlers stay: removing them could drop a signal, see runMount).
  for (const sig of signals) {
    process.off(sig, forward);
    process.on(sig, () => undefined);
  }
  child.unref();
  child.channel?.unref?.();
  if (interrupted) {
    warn(`interrupted: ${argv.mountpoint} is not mounted`);
    return 130;
  }
  if (!result.ok) {
    warn(result.message ?? 'mount failed');
    return 1;
  }
  return 0;
}
