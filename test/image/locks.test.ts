import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { foreignLocks } from '../../src/image';

let dir = '';
let proc: ReturnType<typeof spawn> | undefined;
afterEach(async () => {
  if (proc && proc.exitCode === null) {
    proc.kill('SIGKILL');
    await new Promise((r) => proc!.once('exit', r));
  }
  proc = undefined;
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

it('sees the image locks of a QEMU process that has the image open for writing', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-locks-'));
  const img = path.join(dir, 'vm.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '16M']);
  expect(await foreignLocks(img)).toBeUndefined();
  proc = spawn('qemu-storage-daemon', ['--blockdev', `driver=file,node-name=f,filename=${img}`, '--blockdev', 'driver=qcow2,node-name=q,file=f',
    '--nbd-server', `addr.type=unix,addr.path=${path.join(dir, 'sock')}`, '--export', 'type=nbd,id=e,node-name=q,writable=on'], { stdio: 'ignore' });
  // QEMU takes its locks one by one while it sets up: wait for the write lock.
  let locks;
  for (let i = 0; i < 100 && !locks?.writer; i++) {
    await new Promise((r) => setTimeout(r, 50));
    locks = await foreignLocks(img);
  }
  expect(locks).toMatchObject({ writer: true });
});

it('finds other processes that have a file open for writing, and not readers', async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-locks-'));
  const f = path.join(dir, 'disk.img');
  fs.writeFileSync(f, 'x');
  const { otherWriters } = await import('../../src/image');
  expect(await otherWriters(f)).toEqual([]);
  proc = spawn('sh', ['-c', `exec 3<"${f}"; exec sleep 30`], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 200));
  expect(await otherWriters(f)).toEqual([]); // a reader is no writer
  proc.kill('SIGKILL');
  await new Promise((r) => proc!.once('exit', r));
  proc = spawn('sh', ['-c', `exec 3<>"${f}"; exec sleep 30`], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 200));
  expect(await otherWriters(f)).toEqual([proc.pid]);
});
