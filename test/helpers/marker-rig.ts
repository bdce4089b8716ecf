/**
 * One store (a fault-injecting fake) under a cold detector with a journal in memory, driven by
 * hand (no timer of the detector runs): the rig of the marker-generation reviews (review-h9,
 * review-h11). `reload()` stands for a reload that rebuilds the store's driver (other options).
 */

import pino from 'pino';
import { monotonicMs } from '../../src/clock';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { FakeUpstream } from './fake-upstream';

const silent = pino({ level: 'silent' });
const options = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };

export function markerRig() {
  const fake = new FakeUpstream('fake://store', 'fake');
  const up = new HealthyUpstream(fake, options, () => {});
  const chain = [up];
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const detector = new ColdDetector(() => chain, 60_000, silent, journal);
  const isMarker = (call: string): boolean => call === `set ${detector.key}`;
  /** The marker there now (straight from the store). */
  const current = async (): Promise<string> => (await fake.inner.get([detector.key]))[0]?.value.toString() ?? '';
  /** Puts `text` back as the marker, as a restore of a copy holding it does. */
  const restore = (text: string): Promise<unknown> =>
    fake.inner.store({ mode: 'set', key: detector.key, value: Buffer.from(text), flags: 0, deadline: Date.now() + 3600_000, withCas: false });
  /** Untrusted as a whole (distrust): no key is read from it. */
  const distrusted = (u: HealthyUpstream = up): boolean => journal.isDirty(u, 'any.key');
  /** The next marker write times out for mcmux and waits, held, until fake.open() (a paused server). */
  const holdNextMarkerWrite = async (): Promise<void> => {
    fake.gateOnly = isMarker;
    fake.delay_late();
    await detector.checkAll(); // the rewrite times out, held
    fake.gateOnly = () => false; // what comes next passes; the held write still waits
  };
  /** The reload: the same store, a new driver (other options), standing for the one before, fenced as a precaution. */
  const reload = (): HealthyUpstream => {
    const rebuilt = new FakeUpstream('fake://store', 'fake');
    Object.defineProperty(rebuilt, 'inner', { value: fake.inner });
    const next = new HealthyUpstream(rebuilt, options, () => {});
    next.takeOver(up);
    next.fence(monotonicMs() + 60_000);
    chain.splice(0, 1, next);
    return next;
  };
  return { fake, up, chain, journal, detector, current, restore, distrusted, holdNextMarkerWrite, reload, close: () => up.close() };
}
