'use strict';
/**
 * How a client proves itself to wxlogin: TLS trust and client certificate, and its caller key.
 * The same variables as the Python client's clients/_upstream.py and the edge:
 *
 *   WXLOGIN_UPSTREAM        the gRPC target (default 127.0.0.1:50051)
 *   WXLOGIN_UPSTREAM_CA     PEM roots that sign wxlogin's certificate (unset: the system's)
 *   WXLOGIN_UPSTREAM_CERT   PEM client certificate, for mTLS (with WXLOGIN_UPSTREAM_KEY)
 *   WXLOGIN_UPSTREAM_KEY    its private key
 *   WXLOGIN_CALLER_KEY      the caller key, sent as metadata x-wxlogin-caller-key
 *
 * Any of the three files turns TLS on.
 */

const fs = require('node:fs');

const CALLER_KEY_METADATA = 'x-wxlogin-caller-key';
const DEFAULT_TARGET = '127.0.0.1:50051';
// What a gRPC metadata value may hold, and nothing that could break a header.
const CALLER_KEY = /^[!-~]{16,256}$/;

/** A bad configuration value; the message names the variable (never its secret value). */
class ConfigError extends Error {
  constructor(variable, problem) {
    super(`${variable}: ${problem}`);
    this.name = 'ConfigError';
    this.variable = variable;
  }
}

/** True when `value` can be a caller key: 16-256 printable ASCII characters, no spaces. */
function isCallerKey(value) {
  return typeof value === 'string' && CALLER_KEY.test(value);
}

/** Read PEM files into a TLS config ({ ca, cert, key } as Buffers); any may be omitted. */
function tlsFromFiles({ ca, cert, key } = {}) {
  if (!cert !== !key) throw new Error('a client certificate needs its key, and a key its certificate');
  return {
    ca: ca ? fs.readFileSync(ca) : undefined,
    cert: cert ? fs.readFileSync(cert) : undefined,
    key: key ? fs.readFileSync(key) : undefined,
  };
}

function setting(env, name) {
  const value = (env[name] || '').trim();
  return value || undefined;
}

/**
 * { target, tls, callerKey } from WXLOGIN_UPSTREAM, WXLOGIN_UPSTREAM_CA/_CERT/_KEY and
 * WXLOGIN_CALLER_KEY; throws ConfigError naming the variable on a bad one. Spread it into
 * connect(): `const { target, ...options } = upstreamFromEnv(process.env); connect(target, options)`.
 */
function upstreamFromEnv(env = process.env) {
  const files = {
    WXLOGIN_UPSTREAM_CA: setting(env, 'WXLOGIN_UPSTREAM_CA'),
    WXLOGIN_UPSTREAM_CERT: setting(env, 'WXLOGIN_UPSTREAM_CERT'),
    WXLOGIN_UPSTREAM_KEY: setting(env, 'WXLOGIN_UPSTREAM_KEY'),
  };
  const cert = files.WXLOGIN_UPSTREAM_CERT;
  const key = files.WXLOGIN_UPSTREAM_KEY;
  if (!cert !== !key) {
    throw new ConfigError(key ? 'WXLOGIN_UPSTREAM_CERT' : 'WXLOGIN_UPSTREAM_KEY', 'a client certificate needs both _CERT and _KEY');
  }
  let tls;
  if (Object.values(files).some(Boolean)) {
    for (const [name, path] of Object.entries(files)) {
      if (path && !(fs.existsSync(path) && fs.statSync(path).isFile())) throw new ConfigError(name, `no such file: ${path}`);
    }
    tls = tlsFromFiles({ ca: files.WXLOGIN_UPSTREAM_CA, cert, key });
  }
  const callerKey = setting(env, 'WXLOGIN_CALLER_KEY');
  if (callerKey !== undefined && !isCallerKey(callerKey)) {
    // Never echo it: it is a secret.
    throw new ConfigError('WXLOGIN_CALLER_KEY', 'expected 16-256 printable ASCII characters, no spaces');
  }
  return { target: setting(env, 'WXLOGIN_UPSTREAM') || DEFAULT_TARGET, tls, callerKey };
}

module.exports = { CALLER_KEY_METADATA, DEFAULT_TARGET, ConfigError, isCallerKey, tlsFromFiles, upstreamFromEnv };
