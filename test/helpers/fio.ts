import { spawnSync } from 'node:child_process';

export interface FioJob {
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

/**
 * fio's write+verify: 32 MiB of random writes of 512 B to 64 KiB, each block checksummed
 * (crc32c) and read back; fatal on the first mismatch. Returns the exit status, stderr and the job.
 */
export function fioWriteVerify(file: string, seed: number): { status: number | null; stderr: string; job: FioJob | undefined } {
  const r = spawnSync(
    'fio',
    [
      '--name=verify',
      `--filename=${file}`,
      '--rw=randwrite',
      '--bs=4k',
      '--bsrange=512-64k',
      '--size=32M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--ioengine=psync',
      `--randseed=${seed}`,
      '--output-format=json',
    ],
    { encoding: 'utf8' },
  );
  let job: FioJob | undefined;
  try {
    job = (JSON.parse(r.stdout) as { jobs: FioJob[] }).jobs[0];
  } catch {
    job = undefined;
  }
  return { status: r.status, stderr: r.stderr, job };
}
