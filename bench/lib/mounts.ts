/**
 * The two FUSE servers under test: our mount (`vdiskfs mount -f`) and qemu-storage-daemon's
 * FUSE export. Both run in the foreground as children; a mount is ready when it shows up in
 * /proc/self/mounts, and it is always unmounted again (lazily, if its server died).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { onCleanup } from './cleanup';
import { startDaemon, lastLine } from './procs';
import type { Daemon } from './procs';
import { vdiskfsArgs } from './paths';
import type { ImageFormat } from './images';

/** /proc/mounts escapes blanks and backslashes in octal. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function isMounted(mountpoint: string): boolean {
  const want = path.resolve(mountpoint);
  const text = fs.readFileSync('/proc/self/mounts', 'utf8');
  return text.split('\n').some((l) => unescapeMountPath(l.split(' ')[1] ?? '') === want);
}

/** Lazy unmount with whichever tool exists; silent when nothing is mounted there. */
export function forceUnmount(mountpoint: string): void {
  if (!isMounted(mountpoint)) return;
  for (const [cmd, args] of [
    ['fusermount', ['-u', '-z', mountpoint]],
    ['fusermount3', ['-u', '-z', mountpoint]],
    ['umount', ['-l', mountpoint]],
  ] as const) {
    spawnSync(cmd, args, { stdio: 'ignore' });
    if (!isMounted(mountpoint)) return;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, daemon: Daemon, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (daemon.child.exitCode !== null || daemon.child.signalCode !== null) {
      throw new Error(
        `${what}: server exited (${daemon.child.exitCode ?? daemon.child.signalCode}): ${lastLine(daemon.output()) || 'no output'}`,
      );
    }
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${timeoutMs} ms: ${lastLine(daemon.output()) || 'no output'}`);
    await sleep(25);
  }
}

export interface Mount {
  /** The file fio works on. */
  target: string;
  /** Stops the server (clean shutdown: flush, close) and makes sure nothing stays mounted. */
  stop(): Promise<void>;
  /** The server's output so far (for profiles and error messages). */
  output(): string;
  /** The server's process id (CPU time per request). */
  pid: number | undefined;
}

function withCleanup(mountpoint: string, daemon: Daemon, target: string): Mount {
  const forget = onCleanup(`mount ${mountpoint}`, async () => {
    await daemon.stop(30_000);
    forceUnmount(mountpoint);
  });
  return {
    target,
    pid: daemon.child.pid,
    output: () => daemon.output(),
    stop: async () => {
      const code = await daemon.stop(20_000);
      forceUnmount(mountpoint);
      await forget();
      if (code !== 0 && code !== null)
        process.stderr.write(`bench: server of ${mountpoint} exited ${code}: ${lastLine(daemon.output())}\n`);
    },
  };
}

export interface OurMountOptions {
  images: string;
  mountpoint: string;
  /** The image's name inside `images`; the view is `<mountpoint>/<name>.raw`. */
  imageName: string;
  extraArgs?: readonly string[];
  /** Extra node flags (e.g. --cpu-prof). */
  nodeArgs?: readonly string[];
}

/**
 * The request sizes our kernel transport saw, from the `--stats` report it prints at exit:
 * "read 4K:1200 1M:8; write 1M:8". Undefined when the output has none (fuse-native, peer).
 */
export function transportRequestSizes(output: string): string | undefined {
  const read = /read request sizes: (.*)/.exec(output)?.[1]?.trim();
  const write = /write request sizes: (.*)/.exec(output)?.[1]?.trim();
  if (read === undefined && write === undefined) return undefined;
  return [read && read !== '-' ? `read ${read}` : '', write && write !== '-' ? `write ${write}` : ''].filter(Boolean).join('; ') || '-';
}

/** `vdiskfs mount -f <images> <mountpoint>`, ready once the image's raw view exists. */
export async function mountOurs(o: OurMountOptions): Promise<Mount> {
  fs.mkdirSync(o.mountpoint, { recursive: true });
  const args = vdiskfsArgs(o.nodeArgs ?? [], 'mount', '-f', ...(o.extraArgs ?? []), o.images, o.mountpoint);
  const env = { ...process.env };
  delete env.DEBUG; // debug logging would distort the timing
  const daemon = startDaemon(process.execPath, args, env);
  const mount = withCleanup(o.mountpoint, daemon, path.join(o.mountpoint, `${o.imageName}.raw`));
  try {
    await waitFor(`vdiskfs mount ${o.mountpoint}`, () => isMounted(o.mountpoint), daemon, 20_000);
    // An image its driver cannot open is left out of the mount: the view never appears.
    await waitFor(`raw view of ${o.imageName}`, () => fs.existsSync(mount.target), daemon, 5_000);
  } catch (e) {
    await mount.stop();
    throw e;
  }
  return mount;
}

export interface PeerMountOptions {
  image: string;
  format: ImageFormat;
  /** A regular file: qemu-storage-daemon mounts the export over it. */
  mountFile: string;
  /** Which qemu-storage-daemon (default: the system's). */
  binary?: string;
}

/** qemu-storage-daemon exporting one image over FUSE, writable. */
export async function mountPeer(o: PeerMountOptions): Promise<Mount> {
  fs.writeFileSync(o.mountFile, '');
  const args = [
    '--blockdev',
    `driver=file,node-name=f,filename=${o.image}`,
    '--blockdev',
    `driver=${o.format},node-name=q,file=f`,
    '--export',
    `type=fuse,id=e,node-name=q,mountpoint=${o.mountFile},writable=on`,
  ];
  const daemon = startDaemon(o.binary ?? 'qemu-storage-daemon', args);
  const mount = withCleanup(o.mountFile, daemon, o.mountFile);
  try {
    await waitFor(`qemu-storage-daemon export ${o.mountFile}`, () => isMounted(o.mountFile), daemon, 20_000);
  } catch (e) {
    await mount.stop();
    throw e;
  }
  return mount;
}
