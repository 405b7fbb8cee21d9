import fs from 'node:fs';
import type { FormatDriver } from '../types';
import { FOOTER_BYTES, hasCookie } from './footer';

/*
 * The VHD driver (QEMU calls the format "vpc"), one job per file:
 *   footer.ts          the hard disk footer (and its copy at offset 0)
 *   geometry.ts        CHS geometry and the disk size by QEMU's rules
 *   dynamic-header.ts  the dynamic disk header and parent locators
 *   bat.ts             the BAT and sector bitmaps as a BlockTable: THE WRITE ORDER
 *   fixed-disk.ts      a fixed disk as a BlockTable
 *   locate.ts          which footer counts; a differencing disk's parent
 *   vhd-image.ts       open (layout checks, bitmaps, parent)
 *   create.ts, check.ts   qemu-img create -f vpc / check
 * The bytes move through the shared block engine (../blocks/block-image.ts).
 */
// The implementation loads on first use: probing or listing a folder must not load every format's
// modules (start-up is most of a small command's time).
const load = () => import('./driver-impl');

export const vhdDriver: FormatDriver = {
  name: 'vpc',
  extensions: ['vhd', 'avhd'],
  probe: (head, path) => hasCookie(head) || (/\.a?vhd$/i.test(path) && fixedFooterAtEnd(path)),
  open: async (path, opts) => (await load()).openVhd(path, opts),
  create: async (path, opts) => (await load()).createVhd(path, opts),
  check: async (path, opts) => (await load()).checkVhd(path, opts),
  // No backingFileOf: the parent is checked by Unique Id, which takes opening it; the mount
  // learns it from the opened image (backingImage), under its confinement.
};

/**
 * A fixed VHD has its only footer at the end. Read without blocking: only a regular file (a FIFO
 * or device named .vhd is not opened), non-blocking, and only for names that say VHD.
 */
function fixedFooterAtEnd(path: string): boolean {
  let fd: number | undefined;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.size < FOOTER_BYTES) return false;
    const tail = Buffer.alloc(FOOTER_BYTES);
    fs.readSync(fd, tail, 0, FOOTER_BYTES, st.size - FOOTER_BYTES);
    return hasCookie(tail);
  } catch {
    return false;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
