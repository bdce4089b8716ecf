/**
 * Review findings for the MySQL/MariaDB driver (src/upstream/mysql.ts), each compared with what
 * memcached 1.6 does (a private memcached, live) or with what the other drivers do behind the
 * same `Upstream` interface. One private MariaDB (targets/mysql.ts) for all of them.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import pino from 'pino';
import { type App, startApp } from '../../src/app';
import { EXPIRED } from '../../src/command/command';
import { type Config, buildConfig } from '../../src/config';
import { ConfigError } from '../../src/errors';
import { createMysqlUpstream } from '../../src/upstream/mysql';
import { createUpstream, storeIdentity } from '../../src/upstream/registry';
import type { Upstream } from '../../src/upstream/upstream';
import { arithExtras, frame } from '../helpers/binary-frame';
import { requireBinary, startMemcached } from '../helpers/servers';
import { type Wire, connectWire } from '../helpers/wire';
import { eventually } from '../helpers/poll';
import { connectMysqlUrl, startMariadb } from './targets/mysql';

const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };
const REPLY_MS = 5000;

const BIN_SET = 0x01;
const BIN_INCREMENT = 0x05;
const BIN_DECREMENT = 0x06;
const BIN_GET = 0x00;

interface BinReply {
  readonly opcode: number;
  readonly status: number;
  readonly cas: bigint;
  readonly body: Buffer;
}

/** Sends one binary request and reads its one response (24-byte header + body). */
async function binAsk(w: Wire, request: Buffer): Promise<BinReply> {
  const complete = (t: string): boolean => t.length >= 24 && t.length >= 24 + Buffer.from(t.slice(0, 24), 'latin1').readUInt32BE(8);
  const r = Buffer.from(await w.ask(request, complete, REPLY_MS), 'latin1');
  assert.equal(r[0], 0x81, `a binary response: ${r.toString('hex')}`);
  const skip = 24 + (r[4] as number) + r.readUInt16BE(2);
  return { opcode: r[1] as number, status: r.readUInt16BE(6), cas: r.readBigUInt64BE(16), body: r.subarray(skip) };
}

function setExtras(flags: number, exptime: number): Buffer {
  const e = Buffer.alloc(8);
  e.writeUInt32BE(flags, 0);
  e.writeUInt32BE(exptime, 4);
  return e;
}

/** SET n, then INCREMENT by 1, DECREMENT by 1, GET: the CAS of each answer. */
async function binaryCounter(w: Wire, key: string): Promise<{ set: BinReply; incr: BinReply; decr: BinReply; get: BinReply }> {
  const set = await binAsk(w, frame({ opcode: BIN_SET, key, extras: setExtras(0, 0), value: '41' }));
  const incr = await binAsk(w, frame({ opcode: BIN_INCREMENT, key, extras: arithExtras(1n, 0n, 0xffffffff) }));
  const decr = await binAsk(w, frame({ opcode: BIN_DECREMENT, key, extras: arithExtras(1n, 0n, 0xffffffff) }));
  const get = await binAsk(w, frame({ opcode: BIN_GET, key }));
  return { set, incr, decr, get };
}


/**
 * A private memcached, and mcmux on MySQL (`table` of `dbUrl`) beside it: a wire to each, for the
 * same bytes to be sent to both. Everything is closed after the test.
 */
async function besideMemcached(t: TestContext, dbUrl: string, table: string): Promise<{ real: Wire; mux: Wire }> {
  const mc = await startMemcached();
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-review-mysql-'));
  let app: App | undefined;
  t.after(async () => {
    await app?.close();
    await mc.stop();
    await rm(dir, { recursive: true, force: true });
  });
  app = await startApp(
    buildConfig(
      { scalars: {}, listen: [], upstreams: [] },
      { scalars: { 'state-dir': dir }, listen: ['127.0.0.1:0'], upstreams: [{ url: dbUrl, options: new Map([['table', table]]) }] },
    ),
    pino({ level: 'silent' }),
  );
  const real = await connectWire(mc.port);
  const mux = await connectWire(app.address.port);
  t.after(() => {
    real.close();
    mux.close();
  });
  return { real, mux };
}

test('mysql driver review', { timeout: 120_000 }, async (t) => {
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  const db = await startMariadb();
  const opened: Upstream[] = [];
  const open = (options: Record<string, string> = {}, c: typeof ctx = ctx): Upstream => {
    const u = createMysqlUpstream(new URL(db.url), new Map(Object.entries(options)), c);
    opened.push(u);
    return u;
  };
  t.after(async () => {
    await Promise.all(opened.map((u) => u.close()));
    await db.destroy();
  });

  await t.test('a set that timed out waiting for a row lock does not land after the repair has made the copy clean (a deleted session comes back)', async (t) => {
    // Another client of the database (another mcmux's transaction, an operator's) holds the gap
    // where the session's row would go. mcmux's INSERT of it waits for that lock, times out
    // (300 ms) and its connection is cut; the router takes the request as late, waits
    // LATE_SETTLE_MS for it to land, then repairs the copy. MariaDB does not stop a statement
    // waiting for a lock when its client goes away: it waits innodb_lock_wait_timeout (50 s).
    const table = 'rv_late';
    const url = `${db.url}?table=${table}&timeout=300`;
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-review-mysql-'));
    const raw = await connectMysqlUrl(db.url);
    const apps: App[] = [];
    t.after(async () => {
      await Promise.all(apps.map((a) => a.close()));
      raw.destroy();
      await rm(dir, { recursive: true, force: true });
    });
    const config = (): Config =>
      buildConfig(
        { scalars: {}, listen: [], upstreams: [] },
        { scalars: { 'state-dir': dir }, listen: ['127.0.0.1:0'], upstreams: [{ url: 'memory://', options: new Map() }, { url, options: new Map() }] },
      );
    const first = await startApp(config(), pino({ level: 'silent' }));
    apps.push(first);
    const c = await connectWire(first.address.port);
    t.after(() => c.close());
    assert.equal(await c.ask('set rv:other 0 0 1\r\nx\r\n'), 'STORED\r\n', 'the table exists');

    await raw.query('BEGIN');
    await raw.query(`SELECT * FROM \`${table}\` WHERE \`key\` = 'rv:late' FOR UPDATE`);
    assert.equal(await c.ask('set rv:late 0 0 5\r\nstale\r\n', /\r\n$/, REPLY_MS), 'STORED\r\n', 'the cache took it');
    assert.equal(await c.ask('delete rv:late\r\n', /\r\n$/, REPLY_MS), 'DELETED\r\n', 'the session is deleted');
    // Event: the repair found MySQL's copy settled and made it clean (after LATE_SETTLE_MS).
    await eventually('the repair made the MySQL copy clean', async () => /^STAT upstream\.1\.dirty_keys 0\r$/m.test(await c.ask('stats upstreams\r\n', /END\r\n$/, REPLY_MS)));
    const [waiting] = await raw.query(`SELECT TIME FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO \`${table}\`%'`);
    t.diagnostic(`mcmux's timed-out INSERT still on the server when the copy was called clean: ${JSON.stringify(waiting)}`);
    await raw.query('COMMIT');
    // Event: no statement of mcmux's is left on the server.
    await eventually('the timed-out INSERT has ended on the server', async () => {
      const [rows] = await raw.query(`SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO \`${table}\`%'`);
      return (rows as unknown[]).length === 0;
    });
    const [rows] = await raw.query(`SELECT \`value\` FROM \`${table}\` WHERE \`key\` = 'rv:late'`);
    const held = (rows as Array<{ value: Buffer }>).map((r) => r.value.toString());
    // The cache restarts (mcmux with it): the session is read from MySQL.
    c.close();
    await first.close();
    apps.splice(0);
    const second = await startApp(config(), pino({ level: 'silent' }));
    apps.push(second);
    const d = await connectWire(second.address.port);
    t.after(() => d.close());
    const got = await d.ask('get rv:late\r\n', /END\r\n$/, REPLY_MS);
    assert.equal(got, 'END\r\n', 'the deleted session does not come back once the cache is gone');
    assert.deepEqual(held, [], 'MySQL holds no copy of the deleted session');
  });

  await t.test('binary INCREMENT/DECREMENT through mcmux on MySQL answer the CAS of the item, as memcached 1.6 does', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { real, mux } = await besideMemcached(t, db.url, 'rv_bin');

    // memcached 1.6, live: every answer carries the item's current unique, never 0.
    const m = await binaryCounter(real, 'rv:bin');
    assert.deepEqual([m.incr.status, m.decr.status, m.incr.body.readBigUInt64BE(0), m.decr.body.readBigUInt64BE(0)], [0, 0, 42n, 41n]);
    assert.ok(m.incr.cas !== 0n && m.decr.cas !== 0n, 'memcached answers INCREMENT/DECREMENT with a CAS');
    assert.equal(m.decr.cas, m.get.cas, 'memcached: the DECREMENT CAS is the item\'s');

    const x = await binaryCounter(mux, 'rv:bin');
    assert.deepEqual([x.incr.status, x.decr.status, x.incr.body.readBigUInt64BE(0), x.decr.body.readBigUInt64BE(0)], [0, 0, 42n, 41n]);
    assert.notEqual(x.incr.cas, 0n, 'mcmux on MySQL answers INCREMENT with a CAS, as memcached does (memccapable -b checks it)');
    assert.equal(x.decr.cas, x.get.cas, "mcmux on MySQL: the DECREMENT CAS is the item's, as GET reports it");
  });
});

test('a binary SET whose exptime is already past answers a CAS, as memcached 1.6 does', { timeout: 120_000 }, async (t) => {
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const db = await startMariadb();
  const up = createMysqlUpstream(new URL(db.url), new Map([['table', 'rv_past_driver']]), ctx);
  t.after(async () => {
    await up.close();
    await db.destroy();
  });
  // The driver, beside the memory driver: a stored-and-expired item has a unique too.
  for (const mode of ['set', 'add'] as const) {
    const r = await up.store({ mode, key: `rv:past:${mode}`, value: Buffer.from('v'), flags: 0, deadline: EXPIRED });
    assert.equal(r.status, 'STORED');
    assert.ok(typeof r.cas === 'bigint' && r.cas > 0n, `${mode} of an expired item answers a unique: ${String(r.cas)}`);
  }
  const { real, mux } = await besideMemcached(t, db.url, 'rv_past');
  // 2592001: over 30 days, so a Unix time, in 1970.
  const req = frame({ opcode: BIN_SET, key: 'rv:past', extras: setExtras(0, 2592001), value: 'v' });
  const m = await binAsk(real, req);
  assert.equal(m.status, 0);
  assert.notEqual(m.cas, 0n, 'memcached answers the SET with a CAS');
  const x = await binAsk(mux, req);
  assert.equal(x.status, 0);
  assert.notEqual(x.cas, 0n, 'mcmux on MySQL answers the SET with a CAS, as memcached does');
});

test('a password holding a double quote (or a space) is masked in errors and in the store identity', () => {
  const ctx0 = { defaultTimeoutMs: 1000, maxItemSize: 1024 };
  // Written unencoded, with a / (so not a URL: the error quotes the text as written): README
  // promises the password is masked in every error, as it is for # @ / ? (cli.test.ts).
  const secret = 'Pa"ss/word';
  assert.throws(
    () => createUpstream(`mysql://app:${secret}@127.0.0.1:3306/sessions`, new Map(), ctx0),
    (err) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.ok(!err.message.includes(secret) && !err.message.includes('ss/word'), `the password is printed: ${err.message}`);
      assert.ok(err.message.includes('app'), `the URL is still recognisable: ${err.message}`);
      return true;
    },
  );
  // A URL that parses (the upstream's name is masked), whose identity keys the repair journal
  // (written, hex-encoded, into journal.log) and must not depend on the password.
  for (const pw of ['se"cret', 'se cret']) {
    const url = `mysql://app:${pw}@127.0.0.1:3306/sessions`;
    const up = createUpstream(url, new Map(), ctx0);
    void up.close();
    assert.ok(!up.name.includes(pw), `name: ${up.name}`);
    const id = storeIdentity(url, new Map());
    assert.ok(!id.includes(pw), `the store identity holds the password: ${id}`);
    assert.equal(id, storeIdentity('mysql://app:other@127.0.0.1:3306/sessions', new Map()), 'a new password is the same store');
  }
});

