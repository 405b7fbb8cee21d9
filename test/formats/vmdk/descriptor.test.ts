import { describe, expect, it } from 'vitest';
import { Descriptor, formatCid, looksLikeDescriptor } from '../../../src/formats/vmdk/descriptor';

describe('vmdk descriptor', () => {
  const crlf =
    '# Disk DescriptorFile\r\nversion=1\r\nCID=0000abcd\r\nparentCID=ffffffff\r\ncreateType="twoGbMaxExtentFlat"\r\n\r\n# Extent description\r\nRW 4194304 FLAT "x-f001.vmdk" 0\r\nRDONLY 100 FLAT x-f002.vmdk 7\r\nNOACCESS 8 ZERO\r\n\r\n#DDB\r\nddb.adapterType = "lsilogic"\r\nddb.uuid = "60 00 C2 9b"\r\n';

  it('parses extent lines (quoted and bare names, offsets, ZERO), header and ddb keys', () => {
    const d = Descriptor.parse(crlf);
    expect(d.extents).toEqual([
      { access: 'RW', sectors: 4194304, type: 'FLAT', fileName: 'x-f001.vmdk', offsetSectors: 0 },
      { access: 'RDONLY', sectors: 100, type: 'FLAT', fileName: 'x-f002.vmdk', offsetSectors: 7 },
      { access: 'NOACCESS', sectors: 8, type: 'ZERO', fileName: undefined, offsetSectors: 0 },
    ]);
    expect(d.cid).toBe(0xabcd);
    expect(d.parentCid).toBe(0xffffffff);
    expect(d.createType).toBe('twoGbMaxExtentFlat');
    expect(d.get('ddb.adapterType')).toBe('lsilogic');
    expect(d.eol).toBe('\r\n');
  });

  it('round-trips byte for byte; setting the CID changes only that line and keeps CRLF', () => {
    const d = Descriptor.parse(crlf);
    expect(d.toString()).toBe(crlf);
    d.set('CID', formatCid(0x12345678));
    expect(d.toString()).toBe(crlf.replace('CID=0000abcd', 'CID=12345678'));
  });

  it('stops at NUL padding; refuses descriptors without extents or larger than 1 MiB', () => {
    const d = Descriptor.parse(`${crlf}\0\0\0garbage`);
    expect(d.extents).toHaveLength(3);
    expect(() => Descriptor.parse('# Disk DescriptorFile\nversion=1\n')).toThrow(/no extent/);
    expect(() => Descriptor.parse('x'.repeat((1 << 20) + 1))).toThrow(/1 MiB/);
  });

  it('probe text', () => {
    expect(looksLikeDescriptor(crlf)).toBe(true);
    expect(looksLikeDescriptor('hello world')).toBe(false);
  });
});
