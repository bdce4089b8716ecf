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

/** One binary-protocol response frame as read back (the key as latin1 text, one character a byte). */
export interface ResponseFrame {
  readonly magic: number;
  readonly opcode: number;
  readonly status: number;
  readonly opaque: number;
  readonly cas: bigint;
  readonly extras: Buffer;
  readonly key: string;
  readonly value: Buffer;
}

/** The complete response frames at the start of `buf`, and how many bytes they took. */
export function parseResponseFrames(buf: Buffer): { frames: ResponseFrame[]; used: number } {
  const frames: ResponseFrame[] = [];
  let at = 0;
  while (buf.length - at >= 24) {
    const keyLength = buf.readUInt16BE(at + 2);
    const extrasLength = buf.readUInt8(at + 4);
    const bodyLength = buf.readUInt32BE(at + 8);
    if (buf.length - at < 24 + bodyLength) break;
    const body = at + 24;
    frames.push({
      magic: buf.readUInt8(at),
      opcode: buf.readUInt8(at + 1),
      status: buf.readUInt16BE(at + 6),
      opaque: buf.readUInt32BE(at + 12),
      cas: buf.readBigUInt64BE(at + 16),
      extras: buf.subarray(body, body + extrasLength),
      key: buf.toString('latin1', body + extrasLength, body + extrasLength + keyLength),
      value: buf.subarray(body + extrasLength + keyLength, body + bodyLength),
    });
    at = body + bodyLength;
  }
  return { frames, used: at };
}
