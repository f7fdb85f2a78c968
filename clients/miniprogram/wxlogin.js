'use strict';
/**
 * wxlogin in a WeChat mini-program: log in through the wxlogin edge, keep the
 * token, send it on every request, and log in again when the session is gone.
 *
 *   // app.js
 *   const { createWxLogin } = require('./wxlogin');
 *   const auth = createWxLogin({ baseUrl: 'https://api.example.com', appId: 'wx...', wx });
 *
 *   // any page
 *   const res = await auth.request({ path: '/v1/session' });          // logs in if needed
 *
 *   // encrypted data: wx.login() FIRST, then fetch the data, send both (see decryptFresh)
 *   const { data } = await auth.decryptFresh(() => getWeRunData());   // any API's encryptedData
 *
 *   // <button open-type="getPhoneNumber" bindgetphonenumber="onPhone">
 *   async onPhone(e) { const phone = await auth.getPhoneNumber(e); }  // { phone_number, ... }
 *
 * Plain CommonJS with no dependencies, so it drops into any mini-program.
 */

const DEFAULT_STORAGE_KEY = 'wxlogin_token';
// On these the token is dead: get a new code from wx.login() and log in again.
// Every other failure (including 503) is the caller's to handle: logging in
// again would not help and would spend a code.
const RELOGIN_REASONS = new Set(['SESSION_EXPIRED', 'SESSION_INVALID']);
// On this one /v1/login failed for want of WeChat: it was unreachable, or it spent
// the code and its answer was lost on the way to wxlogin. A code is single use, so
// only a fresh wx.login() can succeed: login() gets one and tries again, a few
// times at most (`loginRetries`), pausing in between so as not to add to WeChat's load.
const FRESH_CODE_REASONS = new Set(['WECHAT_UNAVAILABLE']);
const DEFAULT_LOGIN_RETRIES = 2;
const DEFAULT_RETRY_PAUSE_MS = 200;

/** A failed call: `statusCode` is HTTP, `reason` is what to branch on (see the edge's errors). */
class WxLoginError extends Error {
  constructor(statusCode, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${statusCode}`);
    this.name = 'WxLoginError';
    this.statusCode = statusCode;
    this.code = error.code || '';
    this.reason = error.reason || '';
  }
}

function createWxLogin({
  baseUrl,
  appId = '',
  wx,
  storageKey = DEFAULT_STORAGE_KEY,
  loginRetries = DEFAULT_LOGIN_RETRIES,
  retryPauseMs = DEFAULT_RETRY_PAUSE_MS,
}) {
  if (!baseUrl || !wx) throw new TypeError('createWxLogin needs baseUrl and wx');
  const root = baseUrl.replace(/\/+$/, '');
  // The one login in progress: every caller that needs a token meanwhile waits
  // for it instead of starting its own (each would spend a code and a session).
  let loginInFlight = null;

  function wxLogin() {
    return new Promise((resolve, reject) => {
      wx.login({
        success: (result) =>
          result && result.code
            ? resolve(result.code)
            : reject(new Error(`wx.login gave no code: ${result && result.errMsg}`)),
        fail: (error) => reject(new Error(`wx.login failed: ${error && error.errMsg}`)),
      });
    });
  }

  // wx.request calls `success` for every HTTP status; `fail` only when no answer came.
  function send({ path, method = 'GET', data, token, header = {} }) {
    const headers = { ...header };
    if (token) headers.Authorization = `Bearer ${token}`;
    return new Promise((resolve, reject) => {
      wx.request({
        url: root + path,
        method,
        data,
        header: headers,
        success: resolve,
        fail: (error) => reject(new Error(`request failed: ${error && error.errMsg}`)),
      });
    });
  }

  function storedToken() {
    return wx.getStorageSync(storageKey) || '';
  }

  /** Log in now (or join the login already running); resolves with the edge's login answer. */
  function login() {
    if (!loginInFlight) {
      loginInFlight = (async () => {
        for (let attempt = 0; ; attempt += 1) {
          const res = await loginWithCode(await wxLogin());
          if (res.statusCode === 200) {
            wx.setStorageSync(storageKey, res.data.token);
            return res.data;
          }
          if (!FRESH_CODE_REASONS.has(reasonOf(res)) || attempt >= loginRetries) {
            throw new WxLoginError(res.statusCode, res.data);
          }
          // Full jitter: users whose logins failed together do not retry together.
          await pause(Math.random() * retryPauseMs * 2 ** attempt);
        }
      })().finally(() => {
        loginInFlight = null;
      });
    }
    return loginInFlight;
  }

  /** One /v1/login with one code; wx.request's result, whatever the status. */
  async function loginWithCode(code) {
    const body = appId ? { code, app_id: appId } : { code };
    try {
      return await send({ path: '/v1/login', method: 'POST', data: body });
    } catch (lost) {
      // No answer came (network): send the SAME code once more. wxlogin keeps
      // a code's answer for its 5 minutes, so this gets the session the first
      // request may have opened, instead of spending another wx.login().
      return send({ path: '/v1/login', method: 'POST', data: body });
    }
  }

  async function token() {
    // While a login runs, a stored token is the dead one it replaces.
    if (loginInFlight) return (await loginInFlight).token;
    return storedToken() || (await login()).token;
  }

  /**
   * wx.request with the token attached; on 401 SESSION_EXPIRED or SESSION_INVALID
   * logs in again (once, shared by all requests that hit it) and retries once.
   * Resolves with wx.request's result for 2xx/3xx, rejects with WxLoginError otherwise.
   */
  async function request(options) {
    let used = await token();
    let res = await send({ ...options, token: used });
    if (res.statusCode === 401 && RELOGIN_REASONS.has(reasonOf(res))) {
      // Only the first request to find the token dead throws it away; later
      // ones find a fresh token already stored, or the login in flight.
      if (storedToken() === used) {
        wx.removeStorageSync(storageKey);
      }
      used = await token();
      res = await send({ ...options, token: used });
    }
    if (res.statusCode >= 400) throw new WxLoginError(res.statusCode, res.data);
    return res;
  }

  /**
   * Decrypt WeChat's encryptedData (with iv, and rawData + signature if given).
   * Pass `code` from a wx.login() made just before the data was fetched; without
   * it, a 400 SESSION_KEY_STALE means wx.login() ran since the last login
   * (WeChat replaced the session_key): use decryptFresh, which always sends one.
   */
  async function decryptUserData({ encryptedData, iv, rawData, signature, code }) {
    const res = await request({
      path: '/v1/user-data/decrypt',
      method: 'POST',
      data: { encryptedData, iv, rawData, signature, code },
    });
    return res.data;
  }

  /**
   * The decryption that cannot fail for a stale key: "code first, then encryptedData".
   * Every wx.login() makes WeChat replace the user's session_key, so call it
   * BEFORE `fetchData` (which resolves with an API's { encryptedData, iv, ... }):
   * the data is then encrypted under the key that code brings, and wxlogin
   * exchanges the code first. Never the other way round.
   */
  async function decryptFresh(fetchData) {
    const code = await wxLogin();
    const fields = await fetchData();
    return decryptUserData({ ...fields, code });
  }

  /**
   * The user's phone number from the getPhoneNumber button's event:
   * <button open-type="getPhoneNumber" bindgetphonenumber="onPhone">. Resolves
   * with { phone_number, pure_phone_number, country_code, watermark_time }.
   * The code in e.detail is single use and lives 5 minutes: send it at once.
   */
  async function getPhoneNumber(event) {
    const detail = (event && event.detail) || {};
    if (!detail.code) {
      // The user declined (or the base library is too old to give a code).
      const error = new WxLoginError(0, {
        error: { reason: 'PHONE_NUMBER_DENIED', message: detail.errMsg || 'no phone code' },
      });
      throw error;
    }
    const res = await request({ path: '/v1/phone-number', method: 'POST', data: { code: detail.code } });
    return res.data;
  }

  /**
   * End the session on the server and forget the token. `logout({ all: true })`
   * ends every session of the user (other phones too) and resolves with how many.
   */
  async function logout({ all = false } = {}) {
    const used = storedToken();
    wx.removeStorageSync(storageKey);
    if (!used) return 0;
    const res = await send({
      path: '/v1/logout',
      method: 'POST',
      token: used,
      data: all ? { all: true } : undefined,
    });
    if (res.statusCode >= 400) throw new WxLoginError(res.statusCode, res.data);
    return all ? res.data.revoked : 1;
  }

  return {
    login,
    request,
    decryptUserData,
    decryptFresh,
    getPhoneNumber,
    logout,
    token: storedToken,
  };
}

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function reasonOf(res) {
  return (res.data && res.data.error && res.data.error.reason) || '';
}

module.exports = { createWxLogin, WxLoginError, RELOGIN_REASONS, FRESH_CODE_REASONS };
