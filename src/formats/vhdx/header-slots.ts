/**
 * Header updates ([MS-VHDX] 2.2.2.1): the new header goes into the slot that is not current, with
 * SequenceNumber + 1, so a torn write leaves the old header current. Callers flush after.
 */
import type { HostFile } from '../../io/host-file';
import { HEADER_OFFSETS, serializeHeader, type VhdxHeader } from './header';

export class HeaderSlots {
  constructor(
    private readonly f: HostFile,
    public header: VhdxHeader,
    public slot: 0 | 1,
  ) {}

  async update(changes: Partial<Omit<VhdxHeader, 'sequenceNumber'>>): Promise<void> {
    const next: VhdxHeader = { ...this.header, ...changes, sequenceNumber: this.header.sequenceNumber + 1n };
    const slot = (this.slot ^ 1) as 0 | 1;
    await this.f.write(serializeHeader(next), HEADER_OFFSETS[slot], 'header');
    this.header = next;
    this.slot = slot;
  }
}
