/**
 * memcached's binary protocol: the constants and the 24-byte packet header.
 * Source: protocol_binary.h and the "Memcache Binary Protocol" draft. No sockets.
 *
 *   byte  0       1        2-3      4       5         6-7             8-11      12-15   16-23
 *        magic  opcode  keylen  extlen  datatype  vbucket/status  bodylen  opaque   cas
 *
 * All integers are big-endian and unsigned. bodylen covers extras + key + value, in that order.
 */

export const HEADER_LENGTH = 24;

export const MAGIC = {
  REQUEST: 0x80,
  RESPONSE: 0x81,
} as const;

export const OPCODE = {
  GET: 0x00,
  SET: 0x01,
  ADD: 0x02,
  REPLACE: 0x03,
  DELETE: 0x04,
  INCREMENT: 0x05,
  DECREMENT: 0x06,
  QUIT: 0x07,
  FLUSH: 0x08,
  GETQ: 0x09,
  NOOP: 0x0a,
  VERSION: 0x0b,
  GETK: 0x0c,
  GETKQ: 0x0d,
  APPEND: 0x0e,
  PREPEND: 0x0f,
  STAT: 0x10,
  SETQ: 0x11,
  ADDQ: 0x12,
  REPLACEQ: 0x13,
  DELETEQ: 0x14,
  INCREMENTQ: 0x15,
  DECREMENTQ: 0x16,
  QUITQ: 0x17,
  FLUSHQ: 0x18,
  APPENDQ: 0x19,
  PREPENDQ: 0x1a,
  VERBOSITY: 0x1b,
  TOUCH: 0x1c,
  GAT: 0x1d,
  GATQ: 0x1e,
  SASL_LIST_MECHS: 0x20,
  SASL_AUTH: 0x21,
  SASL_STEP: 0x22,
  GATK: 0x23,
  GATKQ: 0x24,
} as const;

export const STATUS = {
  SUCCESS: 0x00,
  KEY_NOT_FOUND: 0x01,
  KEY_EXISTS: 0x02,
  VALUE_TOO_LARGE: 0x03,
  INVALID_ARGUMENTS: 0x04,
  NOT_STORED: 0x05,
  NON_NUMERIC: 0x06,
  AUTH_ERROR: 0x20,
  UNKNOWN_COMMAND: 0x81,
  OUT_OF_MEMORY: 0x82,
  NOT_SUPPORTED: 0x83,
  INTERNAL_ERROR: 0x84,
  BUSY: 0x85,
  TEMPORARY_FAILURE: 0x86,
} as const;

export type BinaryStatus = (typeof STATUS)[keyof typeof STATUS];

/** The body memcached sends with an error status when it has nothing more specific to say. */
export const STATUS_MESSAGE: Readonly<Partial<Record<BinaryStatus, string>>> = {
  [STATUS.KEY_NOT_FOUND]: 'Not found',
  [STATUS.KEY_EXISTS]: 'Data exists for key.',
  [STATUS.VALUE_TOO_LARGE]: 'Too large.',
  [STATUS.INVALID_ARGUMENTS]: 'Invalid arguments',
  [STATUS.NOT_STORED]: 'Not stored.',
  [STATUS.NON_NUMERIC]: 'Non-numeric server-side value for incr or decr',
  [STATUS.UNKNOWN_COMMAND]: 'Unknown command',
  [STATUS.INTERNAL_ERROR]: 'Internal error',
};

export interface RequestHeader {
  readonly magic: number;
  readonly opcode: number;
  readonly keyLength: number;
  readonly extrasLength: number;
  readonly bodyLength: number;
  /** Echoed unchanged in every response to this request. */
  readonly opaque: number;
  readonly cas: bigint;
}

/** Reads the request header at `offset`; the caller has checked that 24 bytes are there. */
export function readRequestHeader(buf: Buffer, offset: number): RequestHeader {
  return {
    magic: buf.readUInt8(offset),
    opcode: buf.readUInt8(offset + 1),
    keyLength: buf.readUInt16BE(offset + 2),
    extrasLength: buf.readUInt8(offset + 4),
    // offset + 5: datatype (only 0x00, raw bytes, exists); + 6: vbucket. Both ignored, as memcached does.
    bodyLength: buf.readUInt32BE(offset + 8),
    opaque: buf.readUInt32BE(offset + 12),
    cas: buf.readBigUInt64BE(offset + 16),
  };
}

export interface ResponseHeader {
  readonly opcode: number;
  readonly status: number;
  readonly keyLength: number;
  readonly extrasLength: number;
  readonly bodyLength: number;
  readonly opaque: number;
  readonly cas: bigint;
}

/** Writes a response header into `buf` at `offset` (24 bytes). */
export function writeResponseHeader(buf: Buffer, h: ResponseHeader, offset = 0): void {
  buf.writeUInt8(MAGIC.RESPONSE, offset);
  buf.writeUInt8(h.opcode, offset + 1);
  buf.writeUInt16BE(h.keyLength, offset + 2);
  buf.writeUInt8(h.extrasLength, offset + 4);
  buf.writeUInt8(0, offset + 5);
  buf.writeUInt16BE(h.status, offset + 6);
  buf.writeUInt32BE(h.bodyLength, offset + 8);
  buf.writeUInt32BE(h.opaque, offset + 12);
  buf.writeBigUInt64BE(h.cas, offset + 16);
}
