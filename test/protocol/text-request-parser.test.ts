import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EXPIRED } from '../../src/command/command';
import { type ParseResult, TextRequestParser } from '../../src/protocol/text/request-parser';
import { mulberry32 } from '../helpers/random';

const NOW = 1_700_000_000_000;
const LIMITS = { maxLineLength: 2048, maxItemSize: 1024 * 1024, maxKeysPerGet: 8 };

/** A compact, comparable rendering of one parse result. */
function show(r: ParseResult): string {
  switch (r.kind) {
    case 'parse_error':
      return `${r.type}${r.message ? ' ' + r.message : ''}${r.close ? ' [close]' : ''}`;
    case 'get':
      return `${r.withCas ? 'gets' : 'get'}${r.touch !== undefined ? `@${r.touch - NOW}` : ''} ${r.keys.join(',')}`;
    case 'store':
      return `${r.mode} ${r.key} f=${r.flags} d=${r.deadline === 0 ? 0 : r.deadline === EXPIRED ? 'expired' : r.deadline - NOW} v=${JSON.stringify(r.value.toString('latin1'))}${r.cas !== undefined ? ` cas=${r.cas}` : ''}${r.noreply ? ' noreply' : ''}`;
    case 'too_large':
      return `too_large${r.mode === 'set' ? '' : ` ${r.mode}`} ${r.key}${r.noreply ? ' noreply' : ''}`;
    case 'delete':
      return `delete ${r.key}${r.noreply ? ' noreply' : ''}`;
    case 'touch':
      return `touch ${r.key} d=${r.deadline === EXPIRED ? 'expired' : r.deadline - NOW}${r.noreply ? ' noreply' : ''}`;
    case 'arith':
      return `${r.op} ${r.key} ${r.delta}${r.noreply ? ' noreply' : ''}`;
    case 'flush':
      return `flush ${r.delay}${r.noreply ? ' noreply' : ''}`;
    case 'stats':
      return `stats ${r.group}`.trim();
    case 'verbosity':
      return `verbosity${r.noreply ? ' noreply' : ''}`;
    default:
      return r.kind;
  }
}

function run(chunks: Buffer[], limits = LIMITS): string[] {
  const p = new TextRequestParser(limits, () => NOW);
  const out: string[] = [];
  for (const c of chunks) {
    p.push(c);
    for (let r = p.next(); r !== undefined; r = p.next()) out.push(show(r));
  }
  return out;
}

/** Every result of `input` pushed in one piece (values are slices of it). */
function runRaw(input: Buffer, limits = LIMITS): ParseResult[] {
  const p = new TextRequestParser(limits, () => NOW);
  p.push(input);
  const out: ParseResult[] = [];
  for (let r = p.next(); r !== undefined; r = p.next()) out.push(r);
  return out;
}


/** Feeds `input` whole, byte by byte, and split in two at every offset: all must agree. */
function check(input: string | Buffer, expected: string[], limits = LIMITS): void {
  const buf = typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
  assert.deepEqual(run([buf], limits), expected, 'whole');
  const bytes: Buffer[] = [];
  for (let i = 0; i < buf.length; i++) bytes.push(buf.subarray(i, i + 1));
  assert.deepEqual(run(bytes, limits), expected, 'byte by byte');
  for (let i = 1; i < buf.length; i++) {
    assert.deepEqual(run([buf.subarray(0, i), buf.subarray(i)], limits), expected, `split at ${i}`);
  }
}

const BAD = 'CLIENT_ERROR bad command line format';
const k250 = 'k'.repeat(250);
const k251 = 'k'.repeat(251);

const CASES: Array<[string, string | Buffer, string[]]> = [
  ['T1 key of 250 bytes', `set ${k250} 0 0 1\r\nx\r\n`, [`set ${k250} f=0 d=0 v="x"`]],
  ['T1 key of 251 bytes, data swallowed', `set ${k251} 0 0 1\r\nx\r\nversion\r\n`, [BAD, 'version']],
  ['T1 251-byte key inside a multi-get fails the whole get', `get a ${k251} b\r\n`, [BAD]],
  ['T2 bad flags: block swallowed, never run as commands', 'set k x 0 8\r\ndelete a\r\nget k\r\n', [BAD, 'get k']],
  ['T2 unparseable <bytes> closes', 'set k 0 0 abc\r\nget k\r\n', [`${BAD} [close]`]],
  // A key with a space in it (a client that does not check keys): the block must never run.
  ['T2 a storage line with a token too many closes', 'set my key 0 0 14\r\ndelete victim\r\nversion\r\n', [`${BAD} [close]`]],
  ['T2 a storage line with a token too few closes', 'set k 0 5\r\nflush_all\r\n', [`${BAD} [close]`]],
  ['T2 cas without its unique closes', 'cas k 0 0 5\r\nquit!\r\n', [`${BAD} [close]`]],
  ['T3 control byte in key', 'get a\x01b\r\n', [BAD]],
  ['T3 DEL byte in key', 'delete a\x7fb\r\n', [BAD]],
  ['T3 lone CR inside a key', 'get a\rb\r\n', [BAD]],
  ['mcmux\'s own keys (the cold detector\'s markers) are refused, data swallowed', 'get mcmux.sentinel.h\r\nget a mcmux.sentinel.x\r\nset mcmux.sentinel.h 0 0 1\r\nx\r\ndelete mcmux.sentinel.h noreply\r\nincr mcmux.sentinel.h 1\r\ntouch mcmux.sentinel.h 0\r\ngat 0 mcmux.sentinel.h\r\nget mcmux.sentinel mcmux.sentinelx\r\n', [BAD, BAD, BAD, BAD, BAD, BAD, BAD, 'get mcmux.sentinel,mcmux.sentinelx']],
  ['T4 block longer than declared closes', 'set k 0 0 3\r\nabcd\r\nget k\r\n', ['CLIENT_ERROR bad data chunk [close]']],
  // decided on the line, before the block arrives (memcached unlinks the old item then)
  ['T5 too large: swallowed, old value to delete', `set big 0 0 ${1024 * 1024 + 1}\r\n`, ['too_large big']],
  ['T7 bytes -1', 'set k 0 0 -1\r\n', [`${BAD} [close]`]],
  ['T7 bytes 4294967295', 'set k 0 0 4294967295\r\n', [`${BAD} [close]`]],
  ['T7 bytes 12abc', 'set k 0 0 12abc\r\n', [`${BAD} [close]`]],
  ['T7 exptime beyond int32', 'set k 0 2147483648 1\r\nx\r\n', [BAD]],
  ['T7 exptime -2147483649 (below int32): bad format, the block swallowed', 'set k 0 -2147483649 1\r\nx\r\nversion\r\n', [BAD, 'version']],
  ['T7 exptime -2147483648 (int32 min) is accepted', 'set k 0 -2147483648 1\r\nx\r\n', ['set k f=0 d=expired v="x"']],
  ['T7 out-of-range exptime on touch and gat', 'touch k 2147483648\r\ntouch k -2147483649\r\ngat 2147483648 k\r\ngats -2147483649 k\r\ntouch k 12abc noreply\r\ngat 1x k\r\nversion\r\n', [
    ...Array<string>(6).fill('CLIENT_ERROR invalid exptime argument'), 'version',
  ]],
  ['T7 int32 bounds on touch and gat are accepted', 'touch k -2147483648\r\ngat 2147483647 k\r\n', ['touch k d=expired', `get@${2147483647000 - NOW} k`]],
  ['T8 exptime 0, negative, 30 days, absolute past', 'set a 0 0 1\r\na\r\nset b 0 -1 1\r\nb\r\nset c 0 2592000 1\r\nc\r\nset d 0 2592001 1\r\nd\r\n', [
    'set a f=0 d=0 v="a"', 'set b f=0 d=expired v="b"', `set c f=0 d=${2592000 * 1000} v="c"`, 'set d f=0 d=expired v="d"',
  ]],
  ['T8 absolute future', `set a 0 ${NOW / 1000 + 3600} 1\r\na\r\n`, [`set a f=0 d=${3600 * 1000} v="a"`]],
  ['T9 the 2678400 probe is a 1970 time', 'add k 0 2678400 0\r\n\r\n', ['add k f=0 d=expired v=""']],
  ['T10 touch -1, gat -1', 'touch k -1\r\ngat -1 k\r\n', ['touch k d=expired', `get@${EXPIRED - NOW} k`]],
  ['T11 flags bounds', 'set a 4294967295 0 1\r\nx\r\nset b 4294967296 0 1\r\nx\r\nset c -1 0 1\r\nx\r\n', ['set a f=4294967295 d=0 v="x"', BAD, BAD]],
  ['T13 bad delta', 'incr k abc\r\nincr k -1\r\ndecr k 18446744073709551616\r\nincr k 18446744073709551615\r\n', [
    'CLIENT_ERROR invalid numeric delta argument', 'CLIENT_ERROR invalid numeric delta argument',
    'CLIENT_ERROR invalid numeric delta argument', 'incr k 18446744073709551615',
  ]],
  ['T15 cas unique', 'cas k 1 0 2 42\r\nhi\r\ncas k 1 0 2 x\r\nhi\r\n', ['cas k f=1 d=0 v="hi" cas=42', BAD]],
  ['T16 duplicates kept in order', 'get a nokey b a\r\n', ['get a,nokey,b,a']],
  ['T17 noreply', 'set k 0 0 1 noreply\r\nx\r\nget k\r\n', ['set k f=0 d=0 v="x" noreply', 'get k']],
  ['T18 pipelined', 'get a\r\ngets b c\r\nversion\r\nincr n 5 noreply\r\n', ['get a', 'gets b,c', 'version', 'incr n 5 noreply']],
  ['T19 bare LF line endings', 'set k 0 0 2\nhi\r\nget k\ndelete k\n', ['set k f=0 d=0 v="hi"', 'get k', 'delete k']],
  ['T20 unknown command', 'frobnicate\r\nget a\r\n', ['ERROR', 'get a']],
  ['T20 HTTP request closes', 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', ['ERROR [close]']],
  ['T21 delete with time argument', 'delete k 0\r\ndelete k 10\r\ndelete k 0 noreply\r\n', [
    'delete k', 'CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]', 'delete k noreply',
  ]],
  ['T24 admin commands are not forwarded', 'lru_crawler metadump all\r\nslabs reassign 1 2\r\nshutdown\r\nstats upstreams\r\n', ['ERROR', 'ERROR', 'ERROR', 'stats upstreams']],
  ['S5 a lone CR where the block must end: bad data chunk, close', 'set k 0 0 1\r\nx\rget k\r\n', ['CLIENT_ERROR bad data chunk [close]']],
  ['S5 a lone CR does not end a line: the rest is part of it', 'get k\rget j\r\nversion\r\n', [BAD, 'version']],
  ['S5 a lone CR at the end of the input waits for more', 'get k\r', []],
  ['S5 get k CR then LF in a later packet', 'get k\r\nget j\r\n', ['get k', 'get j']],
  ['S5 CR CR LF: a line holding one CR', '\r\r\nversion\r\n', ['ERROR', 'version']],
  ['S5 get k CR CR LF: the key holds a CR', 'get k\r\r\nversion\r\n', [BAD, 'version']],
  ['S5 CR in <bytes>: unparseable, close', 'set k 0 0 1\r\r\nx\r\nversion\r\n', [`${BAD} [close]`]],
  ['binary-safe value with CR LF NUL', Buffer.from('set b 0 0 5\r\n\r\n\0\r\n\r\n', 'latin1'), ['set b f=0 d=0 v="\\r\\n\\u0000\\r\\n"']],
  ['empty line', '\r\n', ['ERROR']],
  ['wrong arity', 'incr k\r\ntouch k\r\nget\r\nset k 0 0\r\nget k\r\n', ['ERROR', 'ERROR', 'ERROR', `${BAD} [close]`]],
  ['keys per get limit', 'get a b c d e f g h i\r\n', ['CLIENT_ERROR too many keys in one get (max-keys-per-get is 8)']],
  // As memcached's: a delay not positive is now, what follows the delay is ignored.
  ['flush_all forms', 'flush_all\r\nflush_all 10\r\nflush_all noreply\r\nflush_all x\r\nflush_all -1\r\nflush_all 5 x\r\nflush_all 5 noreply\r\n', [
    'flush 0', 'flush 10', 'flush 0 noreply', 'CLIENT_ERROR invalid exptime argument', 'flush 0', 'flush 5', 'flush 5 noreply',
  ]],
  ['every command kind', 'append k 0 0 1\r\na\r\nprepend k 0 0 1\r\np\r\nreplace k 3 0 1\r\nr\r\ngats 10 a b\r\nverbosity 1\r\nstats\r\nquit\r\n', [
    'append k f=0 d=0 v="a"', 'prepend k f=0 d=0 v="p"', 'replace k f=3 d=0 v="r"', 'gets@10000 a,b', 'verbosity', 'stats', 'quit',
  ]],
];

describe('text request parser', () => {
  for (const [name, input, expected] of CASES) {
    it(name, () => check(input, expected));
  }

  it('T5 yields too_large after the oversized block is swallowed, then goes on', () => {
    const size = 2048;
    const limits = { ...LIMITS, maxItemSize: 1024 };
    const input = Buffer.concat([Buffer.from(`set big 0 0 ${size}\r\n`), Buffer.alloc(size, 0x61), Buffer.from('\r\nget big\r\n')]);
    check(input, ['too_large big', 'get big'], limits);
  });

  it('T5 never buffers the refused block', () => {
    const p = new TextRequestParser({ ...LIMITS, maxItemSize: 1024 }, () => NOW);
    p.push(Buffer.from('set big 0 0 10000000\r\n'));
    assert.equal(p.next()?.kind, 'too_large');
    assert.equal(p.next(), undefined);
    for (let i = 0; i < 100; i++) p.push(Buffer.alloc(65536, 0x61));
    assert.ok(p.buffered <= 65536, `buffered ${p.buffered}`);
  });

  it('T6 a line over the limit without a newline closes', () => {
    const p = new TextRequestParser(LIMITS, () => NOW);
    p.push(Buffer.from('get ' + 'a'.repeat(2100)));
    const r = p.next();
    assert.ok(r && r.kind === 'parse_error' && r.close);
    assert.equal(p.next(), undefined, 'nothing is parsed after a fatal error');
  });

  it('T6 a line of exactly the limit is accepted however it is split, also between its CR and LF', () => {
    const line = `get ${k250} ${'b'.repeat(240)}`.padEnd(2048, ' ');
    assert.equal(line.length, 2048);
    const expected = run([Buffer.from(line + '\r\n')]);
    assert.match(expected[0] ?? '', /^get /);
    check(line + '\r\n', expected);
  });

  it('T6 a line at the limit is accepted', () => {
    const line = 'get ' + 'a'.repeat(200) + (' ' + 'b'.repeat(240)).repeat(7);
    assert.ok(line.length <= 2048);
    assert.equal(run([Buffer.from(line + '\r\n')]).length, 1);
    assert.match(run([Buffer.from(line + '\r\n')])[0] ?? '', /^get /);
  });

  it('S5 fuzz: LF, CRLF and lone CR inserted anywhere: no throw, the same results however split, every value as long as declared', () => {
    const rand = mulberry32(0x5eed5);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
    const ENDINGS = ['\n', '\r\n', '\r'];
    const value = (): string => Array.from({ length: Math.floor(rand() * 12) }, () => pick(['a', 'b', ' ', '\r', '\n', '\0', 'é'])).join('');
    const command = (): string => {
      const key = pick(['a', 'k', 'key1', 'x'.repeat(20)]);
      const noreply = rand() < 0.2 ? ' noreply' : '';
      switch (Math.floor(rand() * 9)) {
        case 0:
        case 1:
        case 2: {
          const v = value();
          const head = pick(['set', 'add', 'replace', 'append', 'prepend']);
          return `${head} ${key} ${pick(['0', '7', '4294967295'])} ${pick(['0', '-1', '60', '2592001'])} ${v.length}${noreply}\r\n${v}\r\n`;
        }
        case 3: {
          const v = value();
          return `cas ${key} 0 0 ${v.length} ${Math.floor(rand() * 1000)}${noreply}\r\n${v}\r\n`;
        }
        case 4:
          return `${pick(['get', 'gets'])} ${key}${rand() < 0.5 ? ' b c' : ''}\r\n`;
        case 5:
          return `${pick(['gat', 'gats'])} ${pick(['0', '-1', '100'])} ${key}\r\n`;
        case 6:
          return rand() < 0.3 ? `touch ${key} ${pick(['0', '-1', '10'])}${noreply}\r\n` : `${pick(['delete', 'incr', 'decr'])} ${key}${rand() < 0.5 ? ' 5' : ''}${noreply}\r\n`;
        case 7:
          return pick(['version\r\n', 'verbosity 1\r\n', 'stats\r\n', 'bogus\r\n']);
        default:
          return `set ${key} 0 0 ${Math.floor(rand() * 4)}\r\n${value()}\r\n`; // often a wrong length
      }
    };
    let stores = 0;
    let closes = 0;
    for (let round = 0; round < 500; round++) {
      let text = Array.from({ length: 1 + Math.floor(rand() * 5) }, command).join('');
      for (let n = 1 + Math.floor(rand() * 4); n > 0; n--) {
        const at = Math.floor(rand() * (text.length + 1));
        text = text.slice(0, at) + pick(ENDINGS) + text.slice(at);
      }
      const input = Buffer.from(text, 'latin1');
      const label = `round ${round}: ${JSON.stringify(text)}`;
      const whole = runRaw(input);
      const shown = whole.map(show);
      const closeAt = shown.findIndex((x) => x.endsWith('[close]'));
      assert.ok(closeAt < 0 || closeAt === shown.length - 1, `nothing after a close: ${label}`);
      if (closeAt >= 0) closes++;
      for (const r of whole) {
        if (r.kind !== 'store') continue;
        stores++;
        // The declared <bytes>, read from the command line that ends just before the block.
        assert.equal(r.value.buffer, input.buffer, label);
        const at = r.value.byteOffset - input.byteOffset;
        assert.equal(input[at - 1], 0x0a, `the block follows a line: ${label}`);
        const line = input.toString('latin1', input.lastIndexOf(0x0a, at - 2) + 1, at - 1).replace(/\r$/, '');
        const declared = line.split(' ').filter((w) => w.length > 0)[4] ?? '';
        assert.match(declared, /^\d+$/, `${JSON.stringify(line)}: ${label}`);
        assert.equal(r.value.length, Number(declared), `${JSON.stringify(line)}: ${label}`);
        assert.equal(input.toString('latin1', at + r.value.length, at + r.value.length + 2), '\r\n', `the block ends in CRLF: ${label}`);
      }
      assert.deepEqual(run([input]), shown, label);
      assert.deepEqual(run(Array.from(input, (_, i) => input.subarray(i, i + 1))), shown, `byte by byte: ${label}`);
      for (let i = 1; i < input.length; i++) {
        assert.deepEqual(run([input.subarray(0, i), input.subarray(i)]), shown, `split at ${i}: ${label}`);
      }
    }
    // The generator is worth something only if it reaches both outcomes often.
    assert.ok(stores >= 150 && closes >= 50, `${stores} stores and ${closes} closed streams checked`);
  });

  it('values are slices of the input, not copies', () => {
    const p = new TextRequestParser(LIMITS, () => NOW);
    const input = Buffer.from('set k 0 0 5\r\nhello\r\n');
    p.push(input);
    const r = p.next();
    assert.ok(r && r.kind === 'store');
    assert.equal(r.value.buffer, input.buffer);
  });

  it('a store is told no unique: a text STORED carries none', () => {
    const p = new TextRequestParser(LIMITS, () => NOW);
    p.push(Buffer.from('set k 0 0 1\r\na\r\ncas k 0 0 1 5\r\nb\r\n'));
    const modes: Array<[string, boolean]> = [];
    for (let r = p.next(); r !== undefined; r = p.next()) {
      assert.ok(r.kind === 'store');
      modes.push([r.mode, r.withCas]);
    }
    assert.deepEqual(modes, [['set', false], ['cas', false]]);
  });

  it('a value trickled in small reads is copied a bounded number of times, not once per read', () => {
    const value = Buffer.alloc(256 * 1024, 0x61);
    const input = Buffer.concat([Buffer.from(`set k 0 0 ${value.length}\r\n`), value, Buffer.from('\r\n')]);
    const p = new TextRequestParser(LIMITS, () => NOW);
    // Count what the parser allocates (Buffer.concat allocates through allocUnsafe too).
    const original = Buffer.allocUnsafe;
    let allocated = 0;
    Buffer.allocUnsafe = (size: number) => {
      allocated += size;
      return original(size);
    };
    const results: ParseResult[] = [];
    try {
      for (let i = 0; i < input.length; i += 100) {
        p.push(input.subarray(i, i + 100));
        for (let r = p.next(); r !== undefined; r = p.next()) results.push(r);
      }
    } finally {
      Buffer.allocUnsafe = original;
    }
    assert.equal(results.length, 1);
    assert.ok(results[0]?.kind === 'store' && results[0].value.equals(value));
    // A copy of everything so far per read would be about 330 MB here.
    assert.ok(allocated <= 4 * input.length, `allocated ${allocated} bytes for a ${input.length}-byte command`);
  });

  it('values handed out stay intact while later reads are gathered behind them', () => {
    const rnd = mulberry32(7);
    const lines: string[] = [];
    const expected: string[] = [];
    for (let i = 0; i < 300; i++) {
      const v = String.fromCharCode(97 + (i % 26)).repeat(1 + Math.floor(rnd() * 3000));
      lines.push(`set k${i} 0 0 ${v.length}\r\n${v}\r\n`);
      expected.push(`set k${i} f=0 d=0 v=${JSON.stringify(v)}`);
    }
    const input = Buffer.from(lines.join(''), 'latin1');
    const p = new TextRequestParser(LIMITS, () => NOW);
    const results: ParseResult[] = [];
    for (let i = 0; i < input.length; ) {
      const n = 1 + Math.floor(rnd() * 5000);
      p.push(input.subarray(i, i + n));
      i += n;
      for (let r = p.next(); r !== undefined; r = p.next()) results.push(r);
    }
    // Rendered only now: a value overwritten by a later read would show here.
    assert.deepEqual(results.map(show), expected);
  });
});
