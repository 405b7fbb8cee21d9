import { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import { checkRange } from '../data-path';
import type { Extent, Image, ImageInfo, ImageStats } from '../types';

/**
 * A raw image: guest offset == host offset. Used as a backing file, as the baseline of the
 * benchmarks (the ceiling of our FUSE stack) and, with --include-raw, as a view of its own.
 */
export class RawImage implements Image {
  readonly format = 'raw';

  private constructor(
    private readonly file: HostFile,
    public virtualSize: number,
    readonly readOnly: boolean,
  ) {}

  get path(): string {
    return this.file.path;
  }

  static async open(path: string, writable: boolean): Promise<RawImage> {
    const file = await HostFile.open(path, writable);
    return new RawImage(file, await file.size(), !writable);
  }

  async read(offset: number, into: Buffer): Promise<void> {
    checkRange(this, offset, into.length);
    await this.file.read(into, offset, 'data');
  }

  readSync(offset: number, into: Buffer): boolean {
    checkRange(this, offset, into.length);
    return this.file.readSync(into, offset, 'data');
  }

  async write(offset: number, data: Buffer | Buffer[]): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    const len = Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data.length;
    checkRange(this, offset, len);
    await this.file.write(data, offset, 'data');
  }

  writeSync(offset: number, data: Buffer): boolean {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    checkRange(this, offset, data.length);
    return this.file.writeSync(data, offset, 'data');
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length);
    // A raw file has no zero marker; write real zeros in bounded chunks.
    const chunk = Buffer.alloc(Math.min(length, 1 << 20));
    for (let done = 0; done < length; done += chunk.length) {
      const n = Math.min(chunk.length, length - done);
      await this.write(offset + done, n === chunk.length ? chunk : chunk.subarray(0, n));
    }
  }

  /** Punches the range out of the host file; where the host cannot punch, writes zeros. */
  async discard(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    checkRange(this, offset, length);
    if (!this.file.punchHole(offset, length, 'data')) await this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {
    if (!this.readOnly) await this.file.datasync();
  }

  private closed = false;

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.flush();
    await this.file.close();
  }

  async map(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    return [{ offset, length, kind: 'data', hostOffset: offset, hostFile: this.path }];
  }

  async resize(newSize: number): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    if (newSize < this.virtualSize) throw VdiskError.invalid('shrinking an image is not supported');
    await this.file.truncate(newSize);
    this.virtualSize = newSize;
  }

  hostFiles(): string[] {
    return [this.path];
  }

  stats(): ImageStats {
    return { io: { [this.path]: { ...this.file.counters } }, driver: {} };
  }

  async info(): Promise<ImageInfo> {
    const st = await this.file.stat();
    return { filename: this.path, format: 'raw', 'virtual-size': this.virtualSize, 'actual-size': st.blocks * 512 };
  }
}

/** qemu-img create -f raw: an empty file of the size, all of it a hole. */
export async function createRaw(path: string, size: number): Promise<void> {
  const f = await HostFile.create(path);
  await f.truncate(size);
  await f.close();
}
