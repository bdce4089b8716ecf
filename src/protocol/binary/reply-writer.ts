/**
 * Replies to binary-protocol clients: a `Reply` in, response packets out (to be written under one
 * cork). Every packet echoes the request's opcode and opaque, with magic 0x81. A value is pushed
 * as the Buffer itself after its header, never copied.
 *
 * Quiet variants (…Q) send nothing on success; GETQ/GETKQ/GATQ/GATKQ send nothing on a miss.
 * Failures are always sent (B1, B2). Status mapping:
 *
 *   NOT_FOUND 0x01 · EXISTS 0x02 · too large 0x03 · CLIENT_ERROR 0x04 · NOT_STORED 0x05
 *   (but ADD -> 0x02 and REPLACE -> 0x01, as proto_bin.c answers) · non-numeric incr 0x06
 *   ERROR 0x81 (STAT of an unknown group: 0x01, as memcached) · SERVER_ERROR 0x84
 *
 * SERVER_ERROR is 0x84 "internal error", not 0x86 "temporary failure": 0x86 invites an automatic
 * retry, and some of these failures leave the outcome unknown (an incr applied on the authority
 * but not replicated), where a blind retry would apply it twice.
 */

import { type Command, type Hit, type Reply, TOO_LARGE_MESSAGE } from '../../command/command';
import type { OutBuffer } from '../out-buffer';
import { type BinaryStatus, HEADER_LENGTH, OPCODE, STATUS, STATUS_MESSAGE, writeResponseHeader } from './header';
import type { BinaryTag } from './request-parser';

const EMPTY = Buffer.alloc(0);

function header(tag: BinaryTag, status: number, extras: number, keyLength: number, bodyLength: number, cas: bigint, room = 0): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_LENGTH + room);
  writeResponseHeader(buf, { opcode: tag.opcode, status, keyLength, extrasLength: extras, bodyLength, opaque: tag.opaque, cas });
  return buf;
}

/** A response with no extras and no key: success without a body, or an error with its message. */
function simple(tag: BinaryTag, status: number, body: Buffer = EMPTY, cas = 0n): Buffer[] {
  const h = header(tag, status, 0, 0, body.length, cas);
  return body.length > 0 ? [h, body] : [h];
}

/** An error response (cas 0, no extras): the message, or memcached's default text for the status. */
export function errorPacket(opcode: number, opaque: number, status: BinaryStatus, message: string): Buffer {
  const body = Buffer.from(message || STATUS_MESSAGE[status] || '', 'latin1');
  const tag: BinaryTag = { opcode, opaque, base: opcode, quiet: false };
  return Buffer.concat(simple(tag, status, body));
}

function error(tag: BinaryTag, status: BinaryStatus, message: string, out: OutBuffer): void {
  out.push(...simple(tag, status, Buffer.from(message || STATUS_MESSAGE[status] || '', 'latin1')));
}

function withKey(tag: BinaryTag): boolean {
  return tag.base === OPCODE.GETK || tag.base === OPCODE.GATK;
}

/** A get hit: 4-byte flags extras, the key for GETK/GATK, the value, the item's cas. */
function writeHit(hit: Hit, key: string, tag: BinaryTag, out: OutBuffer): void {
  const keyLength = withKey(tag) ? Buffer.byteLength(key, 'latin1') : 0;
  const h = header(tag, STATUS.SUCCESS, 4, keyLength, 4 + keyLength + hit.value.length, hit.cas, 4 + keyLength);
  h.writeUInt32BE(hit.flags >>> 0, HEADER_LENGTH);
  if (keyLength > 0) h.write(key, HEADER_LENGTH + 4, 'latin1');
  out.push(h);
  if (hit.value.length > 0) out.push(hit.value);
}

function writeMiss(key: string, tag: BinaryTag, out: OutBuffer): void {
  if (tag.quiet) return;
  if (withKey(tag)) {
    // proto_bin.c: a GETK/GATK miss carries the key, and no message, so the client can tell which.
    const keyLength = Buffer.byteLength(key, 'latin1');
    const h = header(tag, STATUS.KEY_NOT_FOUND, 0, keyLength, keyLength, 0n, keyLength);
    h.write(key, HEADER_LENGTH, 'latin1');
    out.push(h);
    return;
  }
  error(tag, STATUS.KEY_NOT_FOUND, '', out);
}

function writeStatus(reply: Extract<Reply, { kind: 'status' }>, tag: BinaryTag, out: OutBuffer): void {
  switch (reply.status) {
    case 'STORED':
      if (!tag.quiet) out.push(...simple(tag, STATUS.SUCCESS, EMPTY, reply.cas ?? 0n));
      return;
    case 'TOUCHED':
    case 'DELETED':
    case 'OK':
      if (tag.quiet) return;
      if (reply.status === 'TOUCHED' && reply.flags !== undefined) {
        // proto_bin.c, process_bin_get_or_touch: a TOUCH hit carries the item's flags as extras
        // and its cas (unchanged by the touch), without the value.
        const h = header(tag, STATUS.SUCCESS, 4, 0, 4, reply.cas ?? 0n, 4);
        h.writeUInt32BE(reply.flags >>> 0, HEADER_LENGTH);
        out.push(h);
        return;
      }
      // B10: DELETE, FLUSH, NOOP answer cas 0 (and a TOUCH whose item no upstream could give).
      out.push(...simple(tag, STATUS.SUCCESS));
      return;
    case 'NOT_STORED':
      // proto_bin.c: a failed ADD is "key exists", a failed REPLACE "not found" (memcapable checks).
      if (tag.base === OPCODE.ADD) error(tag, STATUS.KEY_EXISTS, '', out);
      else if (tag.base === OPCODE.REPLACE) error(tag, STATUS.KEY_NOT_FOUND, '', out);
      else error(tag, STATUS.NOT_STORED, '', out);
      return;
    case 'EXISTS':
      error(tag, STATUS.KEY_EXISTS, '', out);
      return;
    case 'NOT_FOUND':
      error(tag, STATUS.KEY_NOT_FOUND, '', out);
      return;
    default: {
      const never: never = reply.status;
      throw new Error(`unhandled status ${String(never)}`);
    }
  }
}

function writeError(reply: Extract<Reply, { kind: 'error' }>, cmd: Command, tag: BinaryTag, out: OutBuffer): void {
  if (cmd.kind === 'too_large' || (reply.type === 'SERVER_ERROR' && reply.message === TOO_LARGE_MESSAGE)) {
    // memcached's binary body, not the text protocol's SERVER_ERROR line the router answers (its
    // own size check, or every store refusing the item as too large).
    error(tag, STATUS.VALUE_TOO_LARGE, '', out);
    return;
  }
  switch (reply.type) {
    case 'CLIENT_ERROR':
      // The router's one CLIENT_ERROR for incr/decr is the non-numeric value (T12, B5), answered
      // with memcached's binary message, not the text protocol's CLIENT_ERROR line.
      if (cmd.kind === 'arith') error(tag, STATUS.NON_NUMERIC, '', out);
      else error(tag, STATUS.INVALID_ARGUMENTS, reply.message, out);
      return;
    case 'SERVER_ERROR':
      error(tag, STATUS.INTERNAL_ERROR, reply.message, out);
      return;
    case 'ERROR':
      // memcached answers a STAT of an unknown group with "not found".
      error(tag, cmd.kind === 'stats' ? STATUS.KEY_NOT_FOUND : STATUS.UNKNOWN_COMMAND, reply.message, out);
      return;
  }
}

/** STAT: one packet per line (key = name, value = value), then an empty terminator. */
function writeStats(lines: ReadonlyArray<readonly [string, string | number | bigint]>, tag: BinaryTag, out: OutBuffer): void {
  for (const [name, value] of lines) {
    const k = Buffer.from(name, 'latin1');
    const v = Buffer.from(String(value), 'latin1');
    const h = header(tag, STATUS.SUCCESS, 0, k.length, k.length + v.length, 0n, k.length + v.length);
    k.copy(h, HEADER_LENGTH);
    v.copy(h, HEADER_LENGTH + k.length);
    out.push(h);
  }
  out.push(header(tag, STATUS.SUCCESS, 0, 0, 0, 0n));
}

/** Appends the response packets for `reply` to `out` (nothing, for a quiet success). */
export function writeBinaryReply(reply: Reply, cmd: Command, tag: BinaryTag, out: OutBuffer): void {
  switch (reply.kind) {
    case 'values': {
      const key = cmd.kind === 'get' ? (cmd.keys[0] ?? '') : '';
      const hit = reply.hits[0];
      if (hit) writeHit(hit, key, tag, out);
      else writeMiss(key, tag, out);
      return;
    }
    case 'status':
      writeStatus(reply, tag, out);
      return;
    case 'number': {
      if (tag.quiet) return;
      const h = header(tag, STATUS.SUCCESS, 0, 0, 8, reply.cas ?? 0n, 8);
      h.writeBigUInt64BE(reply.value, HEADER_LENGTH);
      out.push(h);
      return;
    }
    case 'version':
      out.push(...simple(tag, STATUS.SUCCESS, Buffer.from(reply.version, 'latin1')));
      return;
    case 'stats':
      writeStats(reply.lines, tag, out);
      return;
    case 'error':
      writeError(reply, cmd, tag, out);
      return;
    case 'none':
      // NOOP and QUIT are answered with an empty success; QUITQ closes without a word (B11).
      if ((cmd.kind === 'noop' || cmd.kind === 'quit') && !tag.quiet) out.push(...simple(tag, STATUS.SUCCESS));
      return;
    default: {
      const never: never = reply;
      throw new Error(`unhandled reply ${String(never)}`);
    }
  }
}
