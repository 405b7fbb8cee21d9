import type { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import type { Access } from './descriptor';
import type { CowSource, ExtentMapping, VmdkExtent } from './extent';
import { SECTOR } from './sparse-header';

/** A FLAT (or VMFS) extent: guest bytes at a fixed offset in a plain file; writes go straight through. */
export class FlatExtent implements VmdkExtent {
  private dataWrites = 0;

  constructor(
    readonly type: string,
    readonly access: Access,
    readonly size: number,
    readonly file: HostFile,
    readonly fileName: string,
    private readonly offsetSectors: number,
  ) {}

  mapSync(offset: number, length: number): ExtentMapping {
    return { kind: 'data', length, hostOffset: this.offsetSectors * SECTOR + offset };
  }

  async map(offset: number, length: number): Promise<ExtentMapping> {
    return this.mapSync(offset, length);
  }

  async write(offset: number, data: Buffer[], _length: number, _cow: CowSource | null): Promise<void> {
    if (this.access !== 'RW') throw VdiskError.readOnly(`extent ${this.fileName} is ${this.access}`);
    this.dataWrites++;
    await this.file.write(data, this.offsetSectors * SECTOR + offset, 'data');
  }

  writeSync(offset: number, data: Buffer, _hasParent: boolean): boolean {
    if (this.access !== 'RW') throw VdiskError.readOnly(`extent ${this.fileName} is ${this.access}`);
    if (!this.file.writeSync(data, this.offsetSectors * SECTOR + offset, 'data')) return false;
    this.dataWrites++;
    return true;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const chunk = Buffer.alloc(Math.min(length, 1 << 20));
    for (let done = 0; done < length; done += chunk.length) {
      const n = Math.min(chunk.length, length - done);
      await this.write(offset + done, [chunk.subarray(0, n)], n, async () => {});
    }
  }

  async flush(): Promise<void> {
    if (this.file.writable) await this.file.datasync();
  }

  async close(): Promise<void> {
    await this.file.close();
  }

  counters(): Record<string, number> {
    return { dataWrites: this.dataWrites };
  }
}

/** A ZERO extent: reads as zeros, has no file, cannot be written. */
export class ZeroExtent implements VmdkExtent {
  readonly type = 'ZERO';
  constructor(
    readonly access: Access,
    readonly size: number,
  ) {}
  mapSync(_offset: number, length: number): ExtentMapping {
    return { kind: 'zero', length };
  }
  async map(offset: number, length: number): Promise<ExtentMapping> {
    return this.mapSync(offset, length);
  }
  async write(): Promise<void> {
    throw VdiskError.readOnly('a ZERO extent cannot be written');
  }
  async writeZeroes(): Promise<void> {
    // Already zeros.
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  counters(): Record<string, number> {
    return {};
  }
}
