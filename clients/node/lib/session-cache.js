'use strict';
/**
 * SessionCache: an opt-in, short-lived memory of checkSession answers, like the Python client's
 * (clients/session_cache.py). A backend authenticating every request asks about the same few
 * tokens again and again; a cached answer is used for at most `maxAgeMs` after wxlogin gave it,
 * and never once the session's `expiresAt` has passed. The price: a session revoked elsewhere
 * stays accepted here for up to `maxAgeMs` (a revoke through the same client drops it at once).
 * Keys are SHA-256 digests, so the cache holds no token.
 */

const crypto = require('node:crypto');
const { performance } = require('node:perf_hooks');

// UTF-16 code units, not UTF-8: lossless for any string (UTF-8 would turn every lone surrogate
// into U+FFFD, so two different strings could share a key).
function digest(token) {
  return crypto.createHash('sha256').update(String(token), 'utf16le').digest('base64');
}

class SessionCache {
  /**
   * @param {object} [options] { maxAgeMs = 2000, maxEntries = 10000, monotonic, now }:
   *   `monotonic` (ms, for freshness) and `now` (ms since the epoch, for expiry) are for tests.
   */
  constructor({ maxAgeMs = 2000, maxEntries = 10000, monotonic = () => performance.now(), now = Date.now } = {}) {
    if (!(Number.isFinite(maxAgeMs) && maxAgeMs >= 0)) throw new RangeError('maxAgeMs is a number of milliseconds, 0 or more');
    if (!(Number.isInteger(maxEntries) && maxEntries >= 1)) throw new RangeError('maxEntries is a whole number, 1 or more');
    this.maxAgeMs = maxAgeMs;
    this._maxEntries = maxEntries;
    this._monotonic = monotonic;
    this._now = now;
    // Insertion order is recency order: get() and put() move an entry to the end.
    this._entries = new Map();
    // Moves on every drop: an answer asked for before a drop (a check racing a revoke through
    // this client) is not remembered after it.
    this._generation = 0;
  }

  /** Take it before asking wxlogin; give it to put() with the answer. */
  get generation() {
    return this._generation;
  }

  /**
   * A remembered session that is still fresh and not expired, else null. A new object each
   * time (its user frozen and shared): no caller can change what the next one is told.
   */
  get(token) {
    const key = digest(token);
    const entry = this._entries.get(key);
    if (entry === undefined) return null;
    if (this._monotonic() - entry.storedAt > this.maxAgeMs || this._now() >= entry.expiresAtMs) {
      this._entries.delete(key);
      return null;
    }
    this._entries.delete(key);
    this._entries.set(key, entry);
    return Object.freeze({ user: entry.user, expiresAt: new Date(entry.expiresAtMs) });
  }

  /**
   * Remember what wxlogin just said about a token, unless a drop came since `generation`
   * (when given). A session without a valid expiresAt is not remembered.
   */
  put(token, session, generation) {
    if (generation !== undefined && generation !== this._generation) return;
    const expiresAtMs = session && session.expiresAt instanceof Date ? session.expiresAt.getTime() : NaN;
    if (!Number.isFinite(expiresAtMs)) return;
    const key = digest(token);
    const now = this._monotonic();
    this._entries.delete(key);
    // Kept apart from the caller's object: a Date stays mutable even in a frozen session.
    this._entries.set(key, { storedAt: now, user: Object.freeze({ ...session.user }), expiresAtMs });
    while (this._entries.size > this._maxEntries) this._entries.delete(this._entries.keys().next().value);
    // A stale entry is never served again, but would stay until the size bound pushed it out:
    // the least recently used end is the oldest, so drop at most two there per put (O(1),
    // still faster than puts add entries).
    for (let i = 0; i < 2; i += 1) {
      const [oldestKey, oldest] = this._entries.entries().next().value;
      if (now - oldest.storedAt <= this.maxAgeMs) break;
      this._entries.delete(oldestKey);
    }
  }

  /** Forget a token (revoked through this client). */
  drop(token) {
    this._generation += 1;
    this._entries.delete(digest(token));
  }

  /** Forget every token of a user (logged out everywhere through this client). */
  dropUser(userId) {
    if (!userId) return;
    this._generation += 1;
    for (const [key, entry] of this._entries) {
      if (entry.user.userId === userId) this._entries.delete(key);
    }
  }

  /** Forget everything (a user logged out everywhere whose tokens are not known here). */
  clear() {
    this._generation += 1;
    this._entries.clear();
  }

  get size() {
    return this._entries.size;
  }
}

module.exports = { SessionCache };
