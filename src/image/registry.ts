import type { FormatDriver } from '../formats/types';
import { qcow2Driver } from '../formats/qcow2';
import { vdiDriver } from '../formats/vdi';
import { vhdDriver } from '../formats/vhd';
import { vmdkDriver } from '../formats/vmdk';
import { vhdxDriver } from '../formats/vhdx';
import { rawDriver } from '../formats/raw';

/** Every format vdiskfs knows, most specific signature first; raw (no signature) last. */
export const drivers: readonly FormatDriver[] = [qcow2Driver, vmdkDriver, vhdxDriver, vdiDriver, vhdDriver, rawDriver];

export function driverByName(name: string): FormatDriver | undefined {
  return drivers.find((d) => d.name === name);
}
