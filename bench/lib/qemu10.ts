/**
 * qemu-storage-daemon 10.0, the second peer (#21): Debian's bookworm-backports build of
 * qemu-utils, fetched with `apt-get download` through a private sources list (the machine's apt
 * configuration is left as it is) and unpacked with `dpkg -x` into bench/.cache/qemu-10/, beside
 * the system's QEMU 7.2, which stays the oracle (qemu-img) and the first peer. Fetched once per
 * machine; when the mirror cannot be reached the bench says so and measures the first peer only.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from './paths';

const SUITE = 'deb http://deb.debian.org/debian bookworm-backports main';
const CACHE = path.join(REPO_ROOT, 'bench', '.cache', 'qemu-10');
const BINARY = path.join(CACHE, 'root', 'usr', 'bin', 'qemu-storage-daemon');

export type Qsd10 = { path: string; version: string } | { unavailable: string };

let found: Qsd10 | undefined;

/** The unpacked qemu-storage-daemon 10.x, fetched on first use; or why there is none. */
export function qsd10(log: (line: string) => void = () => undefined): Qsd10 {
  if (found) return found;
  found = versionOf() ?? fetch(log) ?? versionOf() ?? { unavailable: 'qemu-storage-daemon 10 did not run after unpacking' };
  return found;
}

function versionOf(): Qsd10 | undefined {
  if (!fs.existsSync(BINARY)) return undefined;
  const r = spawnSync(BINARY, ['--version'], { encoding: 'utf8' });
  const first = (r.stdout ?? '').split('\n')[0] ?? '';
  const m = /version (10\.[\d.]+.*)$/.exec(first);
  return r.status === 0 && m ? { path: BINARY, version: m[1]! } : undefined;
}

/** apt-get download + dpkg -x; undefined when done (the caller looks again), else why not. */
function fetch(log: (line: string) => void): Qsd10 | undefined {
  log('bench: fetching qemu-storage-daemon 10 (qemu-utils from bookworm-backports) into bench/.cache/qemu-10 ...');
  fs.rmSync(CACHE, { recursive: true, force: true });
  const lists = path.join(CACHE, 'lists');
  fs.mkdirSync(path.join(lists, 'partial'), { recursive: true });
  fs.writeFileSync(path.join(CACHE, 'sources.list'), SUITE + '\n');
  const apt = [
    '-q',
    '-o',
    `Dir::Etc::SourceList=${path.join(CACHE, 'sources.list')}`,
    '-o',
    'Dir::Etc::SourceParts=/dev/null',
    '-o',
    `Dir::State::Lists=${lists}`,
  ];
  const step = (cmd: string, args: string[]): string | undefined => {
    const r = spawnSync(cmd, args, { cwd: CACHE, encoding: 'utf8', timeout: 300_000 });
    return r.status === 0
      ? undefined
      : `${cmd} ${args.filter((a) => !a.startsWith('Dir::')).join(' ')}: ${(r.stderr || r.stdout || String(r.error ?? '')).trim().split('\n').pop()}`;
  };
  const failed =
    step('apt-get', [...apt, 'update']) ??
    step('apt-get', [...apt, 'download', 'qemu-utils']) ??
    (() => {
      const deb = fs.readdirSync(CACHE).find((f) => f.startsWith('qemu-utils_') && f.endsWith('.deb'));
      return deb ? step('dpkg', ['-x', deb, 'root']) : 'apt-get download left no qemu-utils package';
    })();
  return failed ? { unavailable: failed } : undefined;
}
