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
 *   const { data } = await auth.decryptUserData(profileResult);       // wx.getUserProfile's result
 *
 * Plain CommonJS with no dependencies, so it drops into any mini-program.
 */

const DEFAULT_STORAGE_KEY = 'wxlogin_token';
// On these the token is dead: get a new code from wx.login() and log in again.
// Every other failure (including 503) is the caller's to handle: logging in
// again would not help and would spend a code.
const RELOGIN_REASONS = new Set(['SESSION_EXPIRED', 'SESSION_INVALID']);

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

function createWxLogin({ baseUrl, appId = '', wx, storageKey = DEFAULT_STORAGE_KEY }) {
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
        const code = await wxLogin();
        const res = await send({
          path: '/v1/login',
          method: 'POST',
          data: appId ? { code, app_id: appId } : { code },
        });
        if (res.statusCode !== 200) throw new WxLoginError(res.statusCode, res.data);
        wx.setStorageSync(storageKey, res.data.token);
        return res.data;
      })().finally(() => {
        loginInFlight = null;
      });
    }
    return loginInFlight;
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

  /** Decrypt what wx.getUserProfile / getPhoneNumber gave (encryptedData, iv, rawData, signature). */
  async function decryptUserData({ encryptedData, iv, rawData, signature }) {
    const res = await request({
      path: '/v1/user-data/decrypt',
      method: 'POST',
      data: { encryptedData, iv, rawData, signature },
    });
    return res.data;
  }

  /** End the session on the server and forget the token. */
  async function logout() {
    const used = storedToken();
    wx.removeStorageSync(storageKey);
    if (!used) return;
    const res = await send({ path: '/v1/logout', method: 'POST', token: used });
    if (res.statusCode >= 400) throw new WxLoginError(res.statusCode, res.data);
  }

  return { login, request, decryptUserData, logout, token: storedToken };
}

function reasonOf(res) {
  return (res.data && res.data.error && res.data.error.reason) || '';
}

module.exports = { createWxLogin, WxLoginError, RELOGIN_REASONS };
