'use strict';
/**
 * WxLoginClient: calls wxlogin.v1.AuthService with deadlines, the caller key and bounded, safe
 * retries, like the Python client (clients/client.py). Plain objects out, never protobuf.
 */

const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { DeadlineExceeded, ServiceUnavailable, fromServiceError } = require('./errors');
const { CALLER_KEY_METADATA, isCallerKey } = require('./upstream');

const PROTO_FILE = path.join('wxlogin', 'v1', 'auth.proto');
// In the repository the client reads the one contract, protos/; the packed package ships a copy
// of it in proto/ (lib/copy-proto.js, run by `npm pack`).
const PROTO_ROOTS = [path.join(__dirname, '..', '..', '..', 'protos'), path.join(__dirname, '..', 'proto')];

/** Milliseconds each call may take in all, retries included (clients/client.py's Deadlines). */
const DEFAULT_DEADLINES = Object.freeze({
  // Login waits on WeChat, which the service retries within this budget.
  login: 10000,
  // Backends call this on every request they serve: fail fast.
  checkSession: 2000,
  decryptUserData: 5000,
  revokeSession: 5000,
  revokeAllSessions: 5000,
  // These wait on WeChat (getAccessToken only when wxlogin has no token yet).
  getPhoneNumber: 10000,
  getAccessToken: 10000,
  checkSessionKey: 10000,
  resetSessionKey: 10000,
});

/** Retries of idempotent calls on UNAVAILABLE: full-jitter exponential backoff. */
const DEFAULT_RETRY = Object.freeze({
  attempts: 3, // in all, the first included; 1 turns retries off
  initialBackoffMs: 50,
  maxBackoffMs: 1000,
  multiplier: 2,
});

// grpc's default reconnect backoff grows to 120 s; a backend should notice a restarted
// wxlogin within a couple of seconds, not minutes.
const DEFAULT_CHANNEL_OPTIONS = Object.freeze({
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 2000,
  'grpc.keepalive_time_ms': 30000,
});

const REQUEST_ID_METADATA = 'x-request-id';
// Printable ASCII without spaces: always a valid metadata value, unable to break a log line.
const REQUEST_ID = /^[!-~]{1,128}$/;
// Login is retried only when wxlogin's answer never came: the same code gets the same session.
const ANSWER_LOST = new Set([ServiceUnavailable.defaultReason]);

/** True when `value` can travel as the x-request-id metadata as is. */
function isRequestId(value) {
  return typeof value === 'string' && REQUEST_ID.test(value);
}

let authService;
/** The AuthService constructor from the proto, loaded once per process. */
function loadAuthService() {
  if (authService === undefined) {
    const root = PROTO_ROOTS.find((dir) => fs.existsSync(path.join(dir, PROTO_FILE)));
    if (root === undefined) throw new Error(`wxlogin's proto (${PROTO_FILE}) is missing from ${PROTO_ROOTS.join(' and ')}`);
    const definition = protoLoader.loadSync(PROTO_FILE, {
      includeDirs: [root],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    authService = grpc.loadPackageDefinition(definition).wxlogin.v1.AuthService;
  }
  return authService;
}

/** grpc-js channel credentials: TLS with `{ ca, cert, key }` (Buffers, any omitted), or plaintext. */
function channelCredentials(tls) {
  if (!tls) return grpc.credentials.createInsecure();
  if (!tls.cert !== !tls.key) throw new Error('a client certificate needs its key, and a key its certificate');
  return grpc.credentials.createSsl(tls.ca || null, tls.key || null, tls.cert || null);
}

function toDate(stamp) {
  if (!stamp) return null;
  return new Date(Number(stamp.seconds) * 1000 + Math.floor((stamp.nanos || 0) / 1e6));
}

function toUser(user) {
  return {
    userId: user.user_id,
    appId: user.app_id,
    openid: user.openid,
    unionid: user.unionid || null,
    // A wxlogin without linked accounts sends none: the user is its own account.
    accountId: user.account_id || user.user_id,
  };
}

function fromValue(value) {
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct as the plain JSON object it carries. */
function fromStruct(struct) {
  const out = {};
  for (const [key, value] of Object.entries((struct && struct.fields) || {})) out[key] = fromValue(value);
  return out;
}

/** A new session; the token goes to the mini-program and nowhere else, so inspect() hides it. */
function loginResult(reply) {
  return {
    token: reply.token,
    expiresAt: toDate(reply.expires_at),
    user: toUser(reply.user),
    newUser: reply.new_user,
    [util.inspect.custom]() {
      return { token: '<hidden>', expiresAt: this.expiresAt, user: this.user, newUser: this.newUser };
    },
  };
}

class WxLoginClient {
  /**
   * @param {string} target host:port of wxlogin
   * @param {object} [options] { tls, callerKey, deadlines, retry, channelOptions }
   */
  constructor(target, { tls, callerKey, deadlines, retry, channelOptions, sessionCache } = {}) {
    if (callerKey != null && !isCallerKey(callerKey)) {
      throw new TypeError('a caller key is 16-256 printable ASCII characters, no spaces');
    }
    // Its shape, not `instanceof`: an app can end up with two copies of this package.
    if (sessionCache != null && !['get', 'put', 'drop', 'dropUser', 'clear'].every((name) => typeof sessionCache[name] === 'function')) {
      throw new TypeError('sessionCache is a SessionCache (new SessionCache({ maxAgeMs }))');
    }
    // Opt-in (lib/session-cache.js): checkSession answers from memory for up to maxAgeMs.
    this.sessionCache = sessionCache == null ? null : sessionCache;
    this._callerKey = callerKey == null ? null : callerKey;
    this.deadlines = Object.freeze({ ...DEFAULT_DEADLINES, ...(deadlines || {}) });
    this.retry = Object.freeze({ ...DEFAULT_RETRY, ...(retry || {}) });
    const AuthService = loadAuthService();
    this._stub = new AuthService(target, channelCredentials(tls), { ...DEFAULT_CHANNEL_OPTIONS, ...(channelOptions || {}) });
  }

  /** Exchange a wx.login() code for a session; `appId` may be empty with one app configured. */
  async login(code, { appId = '', deadlineMs, requestId } = {}) {
    const reply = await this._call('Login', { app_id: appId, code }, {
      budgetMs: deadlineMs ?? this.deadlines.login,
      idempotent: true,
      retryOnly: ANSWER_LOST,
      requestId,
    });
    return loginResult(reply);
  }

  /** The user and expiry behind a token; SessionInvalid or SessionExpired otherwise. */
  async checkSession(token, { deadlineMs, requestId } = {}) {
    let generation;
    if (this.sessionCache !== null) {
      const cached = this.sessionCache.get(token);
      if (cached !== null) return cached;
      generation = this.sessionCache.generation;
    }
    const reply = await this._call('CheckSession', { token }, {
      budgetMs: deadlineMs ?? this.deadlines.checkSession,
      idempotent: true,
      requestId,
    });
    // Frozen, like the cache's answers: the same shape whichever way it came.
    const session = Object.freeze({ user: Object.freeze(toUser(reply.user)), expiresAt: toDate(reply.expires_at) });
    if (this.sessionCache !== null) this.sessionCache.put(token, session, generation);
    return session;
  }

  /**
   * Decrypt WeChat's encryptedData with the user's session_key; checks the signature if given.
   * `code`: a fresh wx.login() code fetched just before the data (never meet SessionKeyStale).
   */
  async decryptUserData(token, { encryptedData, iv, rawData = '', signature = '', code = '' }, { deadlineMs, requestId } = {}) {
    const reply = await this._call(
      'DecryptUserData',
      { token, encrypted_data: encryptedData, iv, raw_data: rawData, signature, code },
      {
        budgetMs: deadlineMs ?? this.deadlines.decryptUserData,
        // A code is single use: a second try could only fail with CODE_USED.
        idempotent: !code,
        requestId,
      },
    );
    return { data: fromStruct(reply.data), watermarkTime: toDate(reply.watermark_time) };
  }

  /** End a session now (log out); unknown and already revoked tokens are fine. */
  async revokeSession(token, { deadlineMs, requestId } = {}) {
    if (this.sessionCache !== null) this.sessionCache.drop(token);
    await this._call('RevokeSession', { token }, {
      budgetMs: deadlineMs ?? this.deadlines.revokeSession,
      idempotent: true,
      requestId,
    });
    // Again: a check that asked between the first drop and the revoke was told OK.
    if (this.sessionCache !== null) this.sessionCache.drop(token);
  }

  /** Log a user out everywhere, by `{ token }` or `{ userId }`; how many live sessions ended. */
  async revokeAllSessions({ token = '', userId = '' } = {}, { deadlineMs, requestId } = {}) {
    if (!token === !userId) throw new TypeError('give exactly one of token and userId');
    const reply = await this._call('RevokeAllSessions', token ? { token } : { user_id: userId }, {
      budgetMs: deadlineMs ?? this.deadlines.revokeAllSessions,
      idempotent: true,
      requestId,
    });
    if (this.sessionCache !== null) {
      // This client's cache forgets the user; other processes' caches keep serving the user's
      // other tokens for their maxAgeMs at most.
      const cached = token ? this.sessionCache.get(token) : null;
      if (token && cached === null) {
        // Whose tokens these were is not known here: forget them all.
        this.sessionCache.clear();
      } else {
        this.sessionCache.dropUser(cached !== null ? cached.user.userId : userId);
        if (token) this.sessionCache.drop(token);
      }
    }
    return reply.revoked;
  }

  /** The session user's phone number for a getPhoneNumber button's code (single use). */
  async getPhoneNumber(token, phoneCode, { deadlineMs, requestId } = {}) {
    const reply = await this._call('GetPhoneNumber', { token, phone_code: phoneCode }, {
      budgetMs: deadlineMs ?? this.deadlines.getPhoneNumber,
      // A phone code is single use: a second try could only fail with CODE_USED.
      idempotent: false,
      requestId,
    });
    return {
      phoneNumber: reply.phone_number,
      purePhoneNumber: reply.pure_phone_number,
      countryCode: reply.country_code,
      watermarkTime: toDate(reply.watermark_time),
    };
  }

  /**
   * The app's WeChat access_token, the same one every backend gets. When WeChat refuses it
   * (errcode 40001, 40014 or 42001), call again with `{ rejectedToken }`: wxlogin replaces it
   * once, however many backends report it. Needs a caller granted GetAccessToken by name.
   */
  async getAccessToken(appId = '', { rejectedToken = '', deadlineMs, requestId } = {}) {
    const reply = await this._call('GetAccessToken', { app_id: appId, rejected_token: rejectedToken }, {
      budgetMs: deadlineMs ?? this.deadlines.getAccessToken,
      idempotent: true,
      requestId,
    });
    const token = { accessToken: reply.access_token, expiresAt: toDate(reply.expires_at) };
    // It acts as the app itself at WeChat: never shown when logged.
    Object.defineProperty(token, util.inspect.custom, {
      value() {
        return { accessToken: '<hidden>', expiresAt: this.expiresAt };
      },
    });
    return token;
  }

  /** Whether WeChat still holds the session_key wxlogin holds for this user as current. */
  async checkSessionKey(token, { deadlineMs, requestId } = {}) {
    const reply = await this._call('CheckSessionKey', { token }, {
      budgetMs: deadlineMs ?? this.deadlines.checkSessionKey,
      idempotent: true,
      requestId,
    });
    return reply.valid;
  }

  /**
   * Have WeChat replace the user's session_key; wxlogin keeps the new one. SessionKeyStale when
   * wxlogin's key is no longer current (wx.login() ran since): send a fresh code with
   * decryptUserData instead.
   */
  async resetSessionKey(token, { deadlineMs, requestId } = {}) {
    await this._call('ResetSessionKey', { token }, {
      budgetMs: deadlineMs ?? this.deadlines.resetSessionKey,
      // Not retried: after a reset WeChat did whose answer was lost, a second one signs with
      // the old key and can only fail.
      idempotent: false,
      requestId,
    });
  }

  /** Close the channel; calls in flight fail. */
  close() {
    this._stub.close();
  }

  _metadata(requestId) {
    const metadata = new grpc.Metadata();
    if (this._callerKey !== null) metadata.set(CALLER_KEY_METADATA, this._callerKey);
    if (requestId != null && isRequestId(requestId)) metadata.set(REQUEST_ID_METADATA, requestId);
    return metadata;
  }

  _once(method, request, metadata, deadline) {
    return new Promise((resolve, reject) => {
      this._stub[method](request, metadata, { deadline }, (error, reply) => (error ? reject(error) : resolve(reply)));
    });
  }

  async _call(method, request, { budgetMs, idempotent, retryOnly, requestId }) {
    // The deadline covers the whole call, retries and pauses included.
    const deadline = Date.now() + budgetMs;
    const metadata = this._metadata(requestId);
    for (let attempt = 1; ; attempt += 1) {
      let error;
      try {
        return await this._once(method, request, metadata, new Date(deadline));
      } catch (failure) {
        if (failure === null || typeof failure !== 'object' || typeof failure.code !== 'number') throw failure;
        error = fromServiceError(failure);
      }
      let retryable = idempotent && error.code === 'UNAVAILABLE';
      if (retryOnly !== undefined) retryable = retryable && retryOnly.has(error.reason);
      if (!retryable || attempt >= this.retry.attempts) throw error;
      const ceiling = Math.min(this.retry.maxBackoffMs, this.retry.initialBackoffMs * this.retry.multiplier ** (attempt - 1));
      const pause = Math.random() * ceiling;
      // Waiting would only turn UNAVAILABLE into DEADLINE_EXCEEDED.
      if (Date.now() + pause >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, pause));
      if (Date.now() >= deadline) throw new DeadlineExceeded('wxlogin did not answer in time');
    }
  }
}

/** A client with its own channel. Create one per process, share it, and close() it on shutdown. */
function connect(target, options = {}) {
  return new WxLoginClient(target, options);
}

module.exports = { DEFAULT_CHANNEL_OPTIONS, DEFAULT_DEADLINES, DEFAULT_RETRY, WxLoginClient, connect, isRequestId };
