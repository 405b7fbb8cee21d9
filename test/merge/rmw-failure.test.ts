/**
 * Found by review (fixed: it now waits for both reads): writeExtentAligned reads the head and tail pages with Promise.all. When the head read
 * fails at once, the write ends (lease, slot and in-flight entry released) while the tail read is
 * still running in the driver: a later write of that page runs beside it, and close() closes the
 * image under it.
 */
import { describe, expect, it } from 'vitest';
import { RequestMerger } from '../../src/merge';
import { ModelImage } from './model-image';

const MiB = 1 << 20;

describe('a read-modify-write whose page read fails', () => {
  it('no driver request is still running when the merger says it is done (close)', async () => {
    const img = new ModelImage(MiB, {
      // the head page (0) read fails at once; the tail page (4096) read takes a while
      fail: (r) => (r.kind === 'read' && r.offset === 0 ? Object.assign(new Error('EIO (injected)'), { code: 'EIO' }) : undefined),
      delay: (r) => (r.kind === 'read' && r.offset === 4096 ? 40 : 0),
    });
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(100, Buffer.alloc(4096, 1)); // pages 0 and 1, both partial: head + tail RMW reads
    await expect(m.close()).rejects.toMatchObject({ code: 'EIO' });
    // The driver must not be left running a request on a closed image.
    const active = (img as unknown as { active: Set<unknown> }).active.size;
    await new Promise((r) => setTimeout(r, 60));
    expect(active).toBe(0);
  });
});
