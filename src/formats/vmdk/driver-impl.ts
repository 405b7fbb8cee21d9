/** The VMDK driver's entry points, loaded by index.ts when a VMDK image is first used. */
import type { FileDescription } from '../types';
import { extentPaths, parentPath, readLayout } from './layout';

export { checkVmdk } from './check';
export { createVmdk } from './create';
export { VmdkImage } from './vmdk-image';

/** What a listing needs: the extent files the descriptor owns, and the parent it names. */
export async function describeVmdk(path: string): Promise<FileDescription> {
  const layout = await readLayout(path);
  const parent = parentPath(path, layout);
  return { auxiliaryFiles: extentPaths(path, layout).filter((p) => p !== path), ...(parent ? { backingFile: parent } : {}) };
}
