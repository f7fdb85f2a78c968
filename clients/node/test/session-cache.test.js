'use strict';
// SessionCache on its own, on a fake clock: freshness, expiry, its bounds, and what it forgets.
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { SessionCache } = require('..');

const EPOCH = Date.UTC(2026, 0, 1);

/** A cache on clocks the test moves: `clock.ms` (monotonic) and `clock.now` (wall). */
function cacheOn(options = {}) {
  const clock = { ms: 0, now: EPOCH };
  const cache = new SessionCache({ monotonic: () => clock.ms, now: () => clock.now, ...options });
  return { cache, clock };
}

function session(userId, expiresInMs = 3600000) {
  return { user: { userId, appId: 'wx0', openid: `o-${userId}` }, expiresAt: new Date(EPOCH + expiresInMs) };
}

test('an answer is served for maxAgeMs after it was given, then asked again', () => {
  const { cache, clock } = cacheOn({ maxAgeMs: 2000 });
  const alice = session('alice');
  cache.put('token-a', alice);
  clock.ms = 2000;
  assert.deepEqual(cache.get('token-a'), alice);
  clock.ms = 2001;
  assert.equal(cache.get('token-a'), null);
  assert.equal(cache.size, 0, 'a stale entry is dropped when met');
  assert.equal(cache.get('token-b'), null);
});

test("never past the session's expiresAt, however fresh the answer", () => {
  const { cache, clock } = cacheOn({ maxAgeMs: 60000 });
  cache.put('token-a', session('alice', 500));
  clock.now = EPOCH + 499;
  assert.notEqual(cache.get('token-a'), null);
  clock.now = EPOCH + 500;
  assert.equal(cache.get('token-a'), null);
});

test('at most maxEntries, the least recently used out first', () => {
  const { cache } = cacheOn({ maxEntries: 2 });
  cache.put('t1', session('u1'));
  cache.put('t2', session('u2'));
  assert.notEqual(cache.get('t1'), null); // t1 is now the most recently used
  cache.put('t3', session('u3'));
  assert.equal(cache.size, 2);
  assert.equal(cache.get('t2'), null);
  assert.notEqual(cache.get('t1'), null);
  assert.notEqual(cache.get('t3'), null);
});

test('stale entries leave on later puts, not only when the size bound pushes them out', () => {
  const { cache, clock } = cacheOn({ maxAgeMs: 1000 });
  for (let i = 0; i < 10; i += 1) cache.put(`old-${i}`, session(`u${i}`));
  clock.ms = 5000;
  for (let i = 0; i < 5; i += 1) cache.put(`new-${i}`, session(`n${i}`));
  assert.equal(cache.size, 5, 'every put took up to two stale entries with it');
});

test('drop forgets a token, dropUser every token of a user', () => {
  const { cache } = cacheOn();
  cache.put('a1', session('alice'));
  cache.put('a2', session('alice'));
  cache.put('b1', session('bob'));
  cache.drop('b1');
  assert.equal(cache.get('b1'), null);
  cache.dropUser('');
  assert.equal(cache.size, 2, 'an empty user id forgets nobody');
  cache.dropUser('alice');
  assert.equal(cache.size, 0);
});

test('the cache holds digests, never a token, and tells apart strings UTF-8 would merge', () => {
  const { cache } = cacheOn();
  const token = 'wxl1_' + 'S'.repeat(43);
  cache.put(token, session('alice'));
  assert.ok(!util.inspect(cache, { depth: null }).includes(token));
  // Two lone surrogates: both would be U+FFFD in UTF-8, one key for two tokens.
  cache.put('x\uD800', session('carol'));
  assert.equal(cache.get('x\uDC00'), null);
  assert.equal(cache.get('x\uD800').user.userId, 'carol');
});

test('bad options are refused at construction, not at the first call', () => {
  assert.throws(() => new SessionCache({ maxAgeMs: -1 }), RangeError);
  assert.throws(() => new SessionCache({ maxAgeMs: '2s' }), RangeError);
  assert.throws(() => new SessionCache({ maxEntries: 0 }), RangeError);
  assert.throws(() => new SessionCache({ maxEntries: 1.5 }), RangeError);
});

test('what a caller does to its answer changes nothing for the next one', () => {
  const { cache, clock } = cacheOn({ maxAgeMs: 60000 });
  cache.put('token-a', session('alice', 500));
  const first = cache.get('token-a');
  assert.ok(Object.isFrozen(first) && Object.isFrozen(first.user));
  first.expiresAt.setTime(EPOCH + 3600000); // a Date stays mutable inside a frozen object
  clock.now = EPOCH + 500;
  assert.equal(cache.get('token-a'), null, 'the expiry is the one wxlogin gave');
});

test('an answer asked for before a drop is not remembered; clear() forgets everything', () => {
  const { cache } = cacheOn();
  const askedAt = cache.generation; // a check asks wxlogin...
  cache.drop('token-a'); // ...a revoke through the same client drops the token meanwhile...
  cache.put('token-a', session('alice'), askedAt); // ...then the check's OK arrives
  assert.equal(cache.get('token-a'), null);
  cache.put('token-a', session('alice'), cache.generation);
  cache.put('token-b', session('bob'));
  assert.equal(cache.size, 2);
  cache.clear();
  assert.equal(cache.size, 0);
});

test('a session without a valid expiresAt is not remembered', () => {
  const { cache } = cacheOn();
  cache.put('token-a', { user: { userId: 'alice' }, expiresAt: null });
  cache.put('token-b', { user: { userId: 'bob' }, expiresAt: new Date(NaN) });
  assert.equal(cache.size, 0);
});
