/** Binary-protocol request frames for tests (protocol_binary.h): 24-byte header, extras, key, value. */

export interface FrameSpec {
  readonly opcode: number;
  readonly key?: string;
  readonly extras?: Buffer;
  readonly value?: string | Buffer;
  readonly opaque?: number;
  readonly cas?: bigint;
  readonly magic?: number;
  /** Override the lengths the header declares (hostile frames); only the bytes given are sent. */
  readonly keyLength?: number;
  readonly extrasLength?: number;
  readonly bodyLength?: number;
}

export function frame(f: FrameSpec): Buffer {
  const key = Buffer.from(f.key ?? '', 'latin1');
  const extras = f.extras ?? Buffer.alloc(0);
  const value = typeof f.value === 'string' ? Buffer.from(f.value, 'latin1') : (f.value ?? Buffer.alloc(0));
  const h = Buffer.alloc(24);
  h.writeUInt8(f.magic ?? 0x80, 0);
  h.writeUInt8(f.opcode, 1);
  h.writeUInt16BE(f.keyLength ?? key.length, 2);
  h.writeUInt8(f.extrasLength ?? extras.length, 4);
  h.writeUInt32BE(f.bodyLength ?? extras.length + key.length + value.length, 8);
  h.writeUInt32BE(f.opaque ?? 0, 12);
  h.writeBigUInt64BE(f.cas ?? 0n, 16);
  return Buffer.concat([h, extras, key, value]);
}

/** SET/ADD/REPLACE extras: flags, exptime. */
export function storeExtras(flags: number, exptime: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(flags >>> 0, 0);
  b.writeUInt32BE(exptime >>> 0, 4);
  return b;
}

/** INCREMENT/DECREMENT extras: delta (u64), initial (u64), exptime (0xffffffff: do not create). */
export function arithExtras(delta: bigint, initial: bigint, exptime: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeBigUInt64BE(delta, 0);
  b.writeBigUInt64BE(initial, 8);
  b.writeUInt32BE(exptime >>> 0, 16);
  return b;
}
