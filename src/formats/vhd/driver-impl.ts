/** The VHD driver's entry points, loaded by index.ts when a VHD image is first used. */
export { checkVhd } from './check';
export { createVhd } from './create';
export { openVhd } from './vhd-image';
