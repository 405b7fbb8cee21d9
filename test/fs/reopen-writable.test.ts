/**
 * Found by review (fixed: the writable image opens beside the read-only one, whose close waits for its reads): ImageTable.reopenWritable (a writable open of a view already open read-only).
 * 1. When the writable reopen fails (the driver cannot open it writable: EIO, ENOSPC at open,
 *    a repair that fails), the entry keeps the CLOSED merger and image: every read-only handle
 *    already open then gets EIO "read after close" on every read, and new read-only opens get
 *    the same dead entry, until every handle is closed.
 * 2. The read-only image is closed while a read through another handle is still in the driver
 *    (merger.close drains writes only), and reads arriving during the reopen get EIO.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { Image } from '../../src/formats/types';
import { ImageTable } from '../../src/fs/image-table';
import { Confinement } from '../../src/image/confine';
import { ModelImage } from '../merge/model-image';

// vi.mock is hoisted above the imports: ImageTable sees the mocked openImage.
const opens: Array<(writable: boolean) => Promise<Image>> = [];

vi.mock('../../src/image', async (importOriginal) => {
  const orig = await importOriginal<typeof import('../../src/image')>();
  return {
    ...orig,
    openImage: (_path: string, o: { writable: boolean }) => {
      const next = opens.shift();
      if (!next) throw new Error('unexpected open');
      return next(o.writable);
    },
  };
});

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reopen-writable-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

class ReadOnlyModel extends ModelImage {
  override get readOnly(): boolean {
    return true;
  }
  readsAfterClose = 0;
  override async read(offset: number, into: Buffer): Promise<void> {
    await super.read(offset, into);
    if (this.closed) this.readsAfterClose++; // a real driver's host fd is closed (or reused) by now
  }
}

async function setup(name: string) {
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.alloc(1 << 20));
  const view = {
    kind: 'image' as const,
    hostPath: file,
    driver: { name: 'raw' } as never,
    virtualSize: 1 << 20,
    hostFiles: [file],
  };
  const table = new ImageTable({
    readOnly: false,
    nullDriver: false,
    merger: {},
    confinement: await Confinement.create(dir),
    warn: () => undefined,
    isBackingOfAnother: async () => false,
  });
  return { view, table };
}

describe('ImageTable writable reopen', () => {
  it('a failed writable reopen leaves the read-only handles working', async () => {
    const { view, table } = await setup('a.img');
    const ro = new ReadOnlyModel(1 << 20);
    ro.data.fill(7);
    opens.push(async () => ro);
    const reader = await table.acquire(view, false); // a reader (cp, qemu-img convert) has it open
    const into = Buffer.alloc(4096);
    await reader.merger.read(0, into);
    expect(into[0]).toBe(7);

    // Someone opens it for writing; the writable open of the driver fails (EIO at open).
    opens.push(async () => {
      throw Object.assign(new Error('EIO (injected) at open'), { code: 'EIO' });
    });
    await expect(table.acquire(view, true)).rejects.toThrow();

    // The reader goes on reading through its handle: it should not be broken by that.
    const again = await reader.merger.read(0, into).then(
      () => 'ok',
      (e: Error) => e.message,
    );
    // And a new read-only open works too.
    const reader2 = await table.acquire(view, false);
    const fresh = await reader2.merger.read(0, into).then(
      () => 'ok',
      (e: Error) => e.message,
    );
    expect({ again, fresh }).toEqual({ again: 'ok', fresh: 'ok' });
  });

  it('the read-only image is not closed under a read still in flight', async () => {
    const { view, table } = await setup('b.img');
    const ro = new ReadOnlyModel(1 << 20, { delay: (r) => (r.kind === 'read' ? 30 : 0) });
    opens.push(async () => ro);
    const reader = await table.acquire(view, false);
    const rw = new ModelImage(1 << 20);
    opens.push(async () => rw);
    const reading = reader.merger.read(0, Buffer.alloc(4096)).then(
      () => 'ok',
      (e: Error) => e.message,
    );
    await new Promise((r) => setTimeout(r, 5)); // the read is in the driver
    await table.acquire(view, true); // a writer opens the same view
    expect(await reading).toBe('ok');
    expect(ro.readsAfterClose).toBe(0); // the driver's read ran on a closed image
  });

  it('a read arriving while the writable reopen is under way is served, not EIO', async () => {
    const { view, table } = await setup('c.img');
    const ro = new ReadOnlyModel(1 << 20);
    opens.push(async () => ro);
    const reader = await table.acquire(view, false);
    const rw = new ModelImage(1 << 20);
    opens.push(async () => {
      await new Promise((r) => setTimeout(r, 20)); // opening takes a moment (a qcow2 refcount check ...)
      return rw;
    });
    const upgrading = table.acquire(view, true);
    await new Promise((r) => setTimeout(r, 5));
    // FsCore.read looks up h.entry.merger per call: now the closed one.
    const got = await reader.merger.read(0, Buffer.alloc(4096)).then(
      () => 'ok',
      (e: Error) => e.message,
    );
    await upgrading;
    expect(got).toBe('ok');
  });
});
