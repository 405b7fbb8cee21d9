import { describe, expect, it } from 'vitest';
import { VdiskError } from '../../src/io/errors';
import { IoFailureLog, REPEAT_MS } from '../../src/fs/io-failures';

describe('IoFailureLog', () => {
  it('tells the first failure of an image at once, then one line per interval with the count', () => {
    const lines: string[] = [];
    let t = 0;
    const log = new IoFailureLog(
      (m) => lines.push(m),
      () => t,
    );
    const full = VdiskError.noSpace('write /img/a.qcow2: ENOSPC: no space left on device');
    log.note('/img/a.qcow2', 'write', full);
    expect(lines).toEqual(['/img/a.qcow2: write failed: write /img/a.qcow2: ENOSPC: no space left on device']);
    for (let i = 0; i < 5; i++) log.note('/img/a.qcow2', 'write', full);
    log.note('/img/b.vmdk', 'fsync', VdiskError.io('fdatasync /img/b.vmdk: EIO'));
    expect(lines).toHaveLength(2); // another image is told at once
    t += REPEAT_MS;
    log.note('/img/a.qcow2', 'fsync', full);
    expect(lines[2]).toBe(
      '/img/a.qcow2: fsync failed: write /img/a.qcow2: ENOSPC: no space left on device (and 5 more failed requests since the last message)',
    );
  });

  it("does not tell refusals that are the caller's own mistake", () => {
    const lines: string[] = [];
    const log = new IoFailureLog((m) => lines.push(m));
    log.note('/img/a.qcow2', 'write', VdiskError.readOnly('/img/a.qcow2 is read-only'));
    log.note('/img/a.qcow2', 'read', VdiskError.invalid('bad range'));
    expect(lines).toEqual([]);
    log.note('/img/a.qcow2', 'read', new Error('a bug'));
    expect(lines).toEqual(['/img/a.qcow2: read failed: a bug']);
  });
});
