/**
 * The confinement rule through a real mount and the CLI (issue 8): a folder of hostile images
 * (test/helpers/hostile-images.ts) beside good ones. Every hostile image is left out with one
 * log line, nothing outside the folder is ever opened (the daemon's fds, and every open(2) it
 * makes, traced), no special file stalls anything, and the good images keep being served.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CANARY_MARKER, makeHostileImages, type HostileCase, type HostileSet } from '../helpers/hostile-images';
import { CLI, REPO, mount, tempDir, type Mounted } from '../helpers/mount';
import { qemuCheck, qemuIo } from '../helpers/qemu';

/** Only catches a hang (a FIFO opened, a thread pool parked); never a timing assertion. */
const HANG_MS = 20_000;
/** The same for the mount, which runs traced (strace stops it at every syscall) on a shared machine. */
const MOUNT_HANG_MS = 60_000;
const MIB = 1 << 20;

let dir: { path: string; cleanup(): Promise<void> };
let set: HostileSet;
let m: Mounted;
let tracer: OpenTracer | undefined;
let realImages: string;
let realDoor: string;
/** Every file the mount shows, relative to the mountpoint (filled by the listing test). */
let shown: string[] = [];

const refusedCases = () => set.cases.filter((c) => c.verdict === 'refused');
const allowedCases = () => set.cases.filter((c) => c.verdict === 'allowed');

/** Rejects with a clear message instead of waiting forever on a stalled mount. */
function withinHangLimit<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>(
    (_, rej) => (timer = setTimeout(() => rej(new Error(`${what}: no answer in ${MOUNT_HANG_MS / 1000} s (hang)`)), MOUNT_HANG_MS)),
  );
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

/** Reads up to `max` bytes of a file (async: a stalled mount parks a pool thread, not this test). */
async function readHead(file: string, max = 2 * MIB): Promise<Buffer> {
  const fh = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.alloc(max);
    let n = 0;
    while (n < max) {
      const { bytesRead } = await fh.read(buf, n, max - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return buf.subarray(0, n);
  } finally {
    await fh.close();
  }
}

async function listRecursively(dirPath: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const d of await fs.promises.readdir(path.join(dirPath, rel), { withFileTypes: true })) {
    const r = path.join(rel, d.name);
    if (d.isDirectory()) out.push(...(await listRecursively(dirPath, r)));
    else {
      await fs.promises.stat(path.join(dirPath, r)); // getattr too, as `ls -l` would
      out.push(r);
    }
  }
  return out;
}

// ------------------------------------------------------------------ what the daemon opens

/**
 * Paths the daemon may hold or open besides its folders: FUSE itself, its own process, node and
 * this repo's code, and what node reads about the machine (CPUs online, cgroup limits).
 */
function allowedOutside(p: string, pid: number): boolean {
  const nodeHome = path.dirname(path.dirname(process.execPath));
  return (
    /^(pipe|socket|anon_inode):/.test(p) ||
    p === '/dev/fuse' ||
    p === '/dev/null' ||
    p === process.execPath ||
    [
      `${nodeHome}/lib/node_modules/`,
      `${REPO}/node_modules/`,
      `${REPO}/dist/`,
      `/proc/${pid}/`,
      '/proc/self/',
      '/proc/thread-self/',
      '/sys/devices/system/cpu/',
      '/sys/fs/cgroup/',
    ].some((d) => p.startsWith(d))
  );
}

function insideFolders(p: string): boolean {
  return [realImages, realDoor].some((f) => p === f || p.startsWith(f + '/'));
}

/** readlink of every fd the daemon holds right now. */
function openFds(pid: number): string[] {
  const fdDir = `/proc/${pid}/fd`;
  return fs
    .readdirSync(fdDir)
    .map((fd) => {
      try {
        return fs.readlinkSync(path.join(fdDir, fd));
      } catch {
        return ''; // closed meanwhile
      }
    })
    .filter((p) => p !== '');
}

function fdsOutside(pid: number): string[] {
  return openFds(pid).filter((p) => !insideFolders(p.replace(/ \(deleted\)$/, '')) && !allowedOutside(p, pid));
}

/**
 * strace on the running daemon (every thread, -y resolves fds to paths): records each open,
 * openat, openat2 and creat, so even a file opened and closed between two fd snapshots shows.
 */
interface OpenTracer {
  proc: ChildProcess;
  log: string;
  stop(): Promise<string>;
}

async function traceOpens(pid: number, log: string): Promise<OpenTracer> {
  const proc = spawn('strace', ['-f', '-qq', '-y', '-s', '8192', '-e', 'trace=open,openat,openat2,creat', '-o', log, '-p', String(pid)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  proc.once('error', (e) => (err += `${e.message} (this test needs strace installed)`));
  const exited = new Promise<void>((res) => {
    proc.once('exit', () => res());
    proc.once('error', () => res());
  });
  // Attached once every thread of the daemon names strace as its tracer.
  const attached = () =>
    fs.readdirSync(`/proc/${pid}/task`).every((t) => {
      const status = fs.readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      return /^TracerPid:\s*[1-9]/m.test(status);
    });
  for (let i = 0; !attached(); i++) {
    if (proc.exitCode !== null || err.includes('needs strace') || i > 400) {
      proc.kill('SIGKILL');
      throw new Error(`strace did not attach to ${pid}: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    proc,
    log,
    async stop() {
      // SIGINT detaches and the daemon runs on; a thread stuck in the kernel can delay that,
      // so after a moment SIGKILL (the kernel detaches a dead tracer's tracees).
      if (proc.exitCode === null && proc.pid !== undefined) proc.kill('SIGINT');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
      return fs.readFileSync(log, 'utf8');
    },
  };
}

interface TracedOpen {
  line: string;
  /** The name asked for, joined to its dirfd's path (-y), lexically normalized. */
  asked: string;
  /** The file the call returned, when it succeeded. */
  got?: string;
  pathOnly: boolean;
}

/** Parses strace -y lines: `123 openat(5</x/images>, "b.qcow2", O_RDONLY|O_CLOEXEC) = 7</x/images/b.qcow2>`. */
function parseOpens(text: string): TracedOpen[] {
  const out: TracedOpen[] = [];
  const call = /(?:^|\s)(open|openat|openat2|creat)\((?:((?:AT_FDCWD|\d+)(?:<([^>]*)>)?),\s*)?"((?:[^"\\]|\\.)*)"(.*)$/;
  for (const line of text.split('\n')) {
    const c = call.exec(line);
    if (!c) continue;
    const name = unescapeStrace(c[4]!);
    const base = c[3] ?? '/?'; // -y always names the dirfd's folder; without it, count the open as outside
    const asked = path.resolve(base, name);
    const got = /=\s*\d+<([^>]*)>\s*$/.exec(c[5]!)?.[1];
    out.push({ line, asked, got, pathOnly: /\bO_PATH\b/.test(c[5]!) });
  }
  return out;
}

function unescapeStrace(s: string): string {
  return s.replace(/\\(x[0-9a-f]{2}|[0-7]{1,3}|.)/g, (_, e: string) => {
    if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
    if (/^[0-7]+$/.test(e)) return String.fromCharCode(parseInt(e, 8));
    return ({ n: '\n', t: '\t', r: '\r', '"': '"', '\\': '\\' } as Record<string, string>)[e] ?? e;
  });
}

// ------------------------------------------------------------------ the mount

beforeAll(async () => {
  dir = await tempDir();
  set = makeHostileImages(dir.path);
  realImages = fs.realpathSync(set.images);
  realDoor = fs.realpathSync(set.door);
  m = await mount(set.images, path.join(dir.path, 'mnt'), ['--allow-outside', set.door]);
  tracer = await traceOpens(m.proc.pid!, path.join(dir.path, 'opens.strace'));
}, 120_000);

afterAll(async () => {
  if (tracer) await tracer.stop().catch(() => '');
  await m?.cleanup();
  await dir?.cleanup();
}, 120_000);

describe('a folder of hostile images, mounted', () => {
  it('starts, and lists every folder without stalling', async () => {
    shown = await withinHangLimit(listRecursively(m.mnt), 'listing the mount');
    for (const g of set.good) expect(shown, m.stderr()).toContain(g.name + '.raw');
    // Listing twice (cached probes, retried failures) stalls no more than the first time.
    expect(await withinHangLimit(listRecursively(m.mnt), 'listing again')).toEqual(shown);
    expect(fdsOutside(m.proc.pid!), 'fds while serving').toEqual([]);
  });

  it('leaves out every refused image with one log line naming the image, the field and the name', async () => {
    expect(shown.length).toBeGreaterThan(0);
    for (const c of refusedCases()) expect(shown, `${c.name} (${c.escape}) is shown`).not.toContain(c.name + '.raw');
    for (const c of refusedCases()) await m.waitForLog(new RegExp(`left out ${escapeRe(c.name)}:`));
    const lines = m.stderr().split('\n');
    for (const c of refusedCases()) {
      const mine = lines.filter((l) => l.includes(`left out ${c.name}:`));
      expect(mine, `${c.name} (${c.escape}); log:\n${m.stderr()}`).toHaveLength(1);
      if (c.fieldInLog) expect(mine[0], c.name).toMatch(fieldRe(c));
      if (c.fieldInLog && c.escape === 'abs') expect(mine[0], c.name).toContain('canary');
    }
  });

  it('never serves a byte from outside: every view reads without the canary or /etc/shadow', async () => {
    const shadow = readShadowHead();
    const failed: string[] = [];
    for (const rel of shown) {
      const data = await withinHangLimit(readHead(path.join(m.mnt, rel)), `reading ${rel}`).catch((e: Error) => {
        // A read error is no leak; note it (an "either" image or a chain member failing is a finding).
        failed.push(`${rel}: ${e.message}`);
        return Buffer.alloc(0);
      });
      expect(data.indexOf(CANARY_MARKER), `${rel} serves the canary's bytes`).toBe(-1);
      if (shadow) expect(data.indexOf(shadow), `${rel} serves /etc/shadow`).toBe(-1);
    }
    const mustRead = shown.filter((r) => !set.cases.some((c) => c.verdict === 'either' && r === c.name + '.raw'));
    expect(
      failed.filter((f) => mustRead.some((r) => f.startsWith(r + ':'))),
      'views shown but unreadable',
    ).toEqual([]);
    expect(fdsOutside(m.proc.pid!), 'fds after reading every view').toEqual([]);
  });

  it('keeps serving the names that are fine: relative, absolute inside, ../ inside, at the depth limit, through the door', async () => {
    for (const c of allowedCases()) {
      expect(shown, `${c.name} (${c.escape}) is left out; log:\n${m.stderr()}`).toContain(c.name + '.raw');
      const data = await withinHangLimit(readHead(path.join(m.mnt, c.name + '.raw'), 65536), `reading ${c.name}`);
      expect(data.length, c.name).toBe(65536);
      expect(
        data.every((b) => b === c.pattern),
        `${c.name} reads its base's bytes`,
      ).toBe(true);
    }
  });

  it('the good images beside them keep reading and writing', async () => {
    for (const g of set.good) {
      const view = path.join(m.mnt, g.name + '.raw');
      const before = await withinHangLimit(readHead(view, MIB), `reading ${g.name}`);
      expect(
        before.every((b) => b === g.pattern),
        g.name,
      ).toBe(true);
      const fh = await withinHangLimit(fs.promises.open(view, 'r+'), `opening ${g.name} for writing`);
      try {
        await withinHangLimit(fh.write(Buffer.alloc(65536, 0x77), 0, 65536, 4 * MIB), `writing ${g.name}`);
        // While a view is open for writing the daemon holds the image: still nothing outside.
        expect(fdsOutside(m.proc.pid!), `fds while ${g.name} is open`).toEqual([]);
        await withinHangLimit(fh.sync(), `fsync ${g.name}`);
      } finally {
        await fh.close();
      }
      const back = Buffer.alloc(65536);
      const rh = await fs.promises.open(view, 'r');
      await withinHangLimit(rh.read(back, 0, back.length, 4 * MIB), `reading back ${g.name}`).finally(() => rh.close());
      expect(
        back.every((b) => b === 0x77),
        g.name,
      ).toBe(true);
    }
  });

  it('opened nothing outside the folder at any moment (every open(2) the daemon made, traced)', async () => {
    const log = await tracer!.stop();
    tracer = undefined;
    const opens = parseOpens(log);
    expect(opens.length, 'strace saw the probes open the images').toBeGreaterThan(set.cases.length);
    const pid = m.proc.pid!;
    const bad = opens.filter(
      (o) =>
        !o.pathOnly &&
        ((!insideFolders(o.asked) && !allowedOutside(o.asked, pid)) ||
          (o.got !== undefined && !insideFolders(o.got) && !allowedOutside(o.got, pid))),
    );
    expect(
      bad.map((o) => o.line.slice(0, 300)),
      'opens outside the images folder',
    ).toEqual([]);
    // And none of the special files inside it: a FIFO or a folder is never opened as an image part.
    const special = new Set(['pipe.raw', 'pipe.vmdk', 'fifo.qcow2', 'a-folder'].map((n) => path.join(realImages, n)));
    const opened = opens.filter(
      (o) => !o.pathOnly && (special.has(o.asked) || (o.got !== undefined && special.has(o.got))) && !/O_DIRECTORY/.test(o.line),
    );
    expect(
      opened.map((o) => o.line.slice(0, 300)),
      'special files opened',
    ).toEqual([]);
  });

  it('unmounts cleanly; the good images are consistent and hold what was written', async () => {
    expect(await m.unmount()).toBe(0);
    for (const g of set.good) {
      const file = path.join(set.images, g.name);
      expect(qemuCheck(file).ok, g.name).toBe(true);
      expect(qemuIo(file, ['read -P 0x77 4M 64k', `read -P 0x${g.pattern.toString(16)} 0 1M`])).not.toMatch(/Pattern verification failed/);
    }
  });
});

// ------------------------------------------------------------------ the CLI

interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], cwd: string): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { cwd, encoding: 'utf8', timeout: HANG_MS, killSignal: 'SIGKILL', maxBuffer: 16 * MIB },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; signal?: NodeJS.Signals | null }) | null;
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, signal: e?.signal ?? null, stdout, stderr });
      },
    );
  });
}

/** Runs `jobs` two at a time (two cores, shared). */
async function inPairs<T>(jobs: Array<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < jobs.length; i = next++) out[i] = await jobs[i]!();
  };
  await Promise.all([worker(), worker()]);
  return out;
}

/** Paths `map` (or any output) must never print for a hostile image. */
function outsideNames(): string[] {
  return [set.outside, fs.realpathSync(set.outside), '/etc/shadow', '/dev/zero', '/proc/self/mem', set.canaryRaw];
}

/**
 * The commands each refused image goes through: info always (it opens the image as map does);
 * check too where a hang (FIFO, a probed device), a loop, a deep chain or a missing file is
 * likeliest (check has a path of its own); map where an outside path could be printed.
 * qemu-img check and map open the whole chain too, so a name that escapes fails them all.
 */
function commandsFor(c: HostileCase): string[][] {
  const cmds = [['info']];
  if (['abs', 'fifo', 'loop', 'deep', 'missing'].includes(c.escape) || c.name.startsWith('backing-probe-')) cmds.push(['check']);
  if (c.escape === 'abs') cmds.push(['map', '--output=json']);
  return cmds;
}

describe('info, check and map on each hostile image', () => {
  it('exit non-zero with one line and no stack trace, never hang, never print an outside path', async () => {
    const jobs = refusedCases().flatMap((c) =>
      commandsFor(c).map((cmd) => async () => ({ c, cmd, r: await cli([...cmd, c.name], set.images) })),
    );
    const results = await inPairs(jobs);
    const problems: string[] = [];
    for (const { c, cmd, r } of results) {
      const what = `vdiskfs ${cmd.join(' ')} ${c.name} (${c.escape})`;
      if (r.signal) problems.push(`${what}: hung (killed after ${HANG_MS / 1000} s)`);
      else if (r.code === 0) problems.push(`${what}: exit 0`);
      const err = r.stderr.trim();
      if (err === '' || err.includes('\n')) problems.push(`${what}: stderr is not one line: ${JSON.stringify(err.slice(0, 400))}`);
      if (/looks like a bug|^\s+at /m.test(r.stderr)) problems.push(`${what}: reported as a bug / stack trace: ${err.slice(0, 400)}`);
      if (c.fieldInLog && !fieldRe(c).test(err)) problems.push(`${what}: the error does not name the field: ${err.slice(0, 300)}`);
      for (const p of outsideNames()) if (r.stdout.includes(p)) problems.push(`${what}: prints ${p}`);
    }
    expect(problems).toEqual([]);
  }, 600_000);

  it("the monolithicSparse descriptor's own extent name is ignored or refused, never followed", async () => {
    for (const c of set.cases.filter((x) => x.verdict === 'either')) {
      const r = await cli(['map', '--output=json', c.name], set.images);
      expect(r.signal, c.name).toBeNull();
      for (const p of outsideNames()) expect(r.stdout, c.name).not.toContain(p);
      expect(r.stderr, c.name).not.toMatch(/looks like a bug|^\s+at /m);
    }
  });

  it('names that are fine work, and the door opens only with --allow-outside', async () => {
    for (const c of allowedCases().filter((x) => !x.door)) {
      const r = await cli(['info', '--output=json', c.name], set.images);
      expect(r.code, `${c.name}: ${r.stderr}`).toBe(0);
      expect(r.stdout).not.toContain(set.outside);
    }
    for (const c of allowedCases().filter((x) => x.door)) {
      const shut = await cli(['map', '--output=json', c.name], set.images);
      expect(shut.code, `${c.name} without the door`).not.toBe(0);
      expect(shut.stderr.trim().split('\n')).toHaveLength(1);
      expect(shut.stderr).toMatch(/--allow-outside/);
      for (const cmd of [['info'], ['check'], ['map', '--output=json']]) {
        const open = await cli([...cmd, '--allow-outside', set.door, c.name], set.images);
        expect(open.code, `${cmd[0]} ${c.name} through the door: ${open.stderr}`).toBe(0);
      }
    }
    // The door lets regular files and block devices through, never a character device.
    const zero = set.cases.find((c) => c.name === 'backing-dev-zero.qcow2')!;
    const r = await cli(['info', '--allow-outside', '/dev', zero.name], set.images);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/character device|not a regular file/);
  });
});

function fieldRe(c: HostileCase): RegExp {
  return { 'backing file': /backing/i, 'data file': /data.file/i, extent: /extent/i, parent: /parent/i }[c.field!];
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The first bytes of /etc/shadow, if it has any worth looking for. */
function readShadowHead(): Buffer | undefined {
  try {
    const b = fs.readFileSync('/etc/shadow');
    return b.length >= 16 ? b.subarray(0, Math.min(64, b.length)) : undefined;
  } catch {
    return undefined;
  }
}
