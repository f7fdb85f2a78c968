'use strict';
/**
 * The client's error tree, keyed on the ErrorInfo `reason` wxlogin sends. The same tree, the
 * same names and the same rules as the Python client's clients/_errors.py.
 *
 *   WxLoginError                      every failed call: .code, .grpcCode, .reason, .message, .metadata
 *   ├── InvalidRequest                INVALID_ARGUMENT: fix the request; retrying won't help
 *   │   ├── BadRequest                BAD_REQUEST
 *   │   ├── AppUnknown                APP_UNKNOWN
 *   │   ├── DecryptFailed             DECRYPT_FAILED
 *   │   ├── WatermarkExpired          WATERMARK_EXPIRED
 *   │   └── SignatureMismatch         SIGNATURE_MISMATCH
 *   ├── Unauthenticated               UNAUTHENTICATED: the user must (re)run wx.login()
 *   │   ├── CodeInvalid               CODE_INVALID
 *   │   ├── CodeUsed                  CODE_USED
 *   │   ├── SessionInvalid            SESSION_INVALID
 *   │   └── SessionExpired            SESSION_EXPIRED
 *   ├── PermissionDenied              PERMISSION_DENIED
 *   │   ├── UserBlocked               USER_BLOCKED
 *   │   ├── WatermarkMismatch         WATERMARK_MISMATCH
 *   │   └── CodeUserMismatch          CODE_USER_MISMATCH (the code is another user's)
 *   ├── FailedPrecondition            FAILED_PRECONDITION: do the named step first
 *   │   └── SessionKeyStale           SESSION_KEY_STALE: call wx.login() and send the code
 *   ├── RateLimited                   RESOURCE_EXHAUSTED, RATE_LIMITED: slow down
 *   │   └── Overloaded                OVERLOADED (wxlogin sheds load; back off, then retry)
 *   ├── Unavailable                   UNAVAILABLE: retry later
 *   │   ├── WeChatUnavailable         WECHAT_UNAVAILABLE
 *   │   ├── WeChatError               WECHAT_ERROR (errcode in .metadata)
 *   │   ├── StoreUnavailable          STORE_UNAVAILABLE
 *   │   └── ServiceUnavailable        SERVICE_UNAVAILABLE (no ErrorInfo: wxlogin unreachable)
 *   ├── CallerError                   this backend's own credentials or grant: fix its
 *   │   │                             configuration; never the user's fault (HTTP 500)
 *   │   ├── CallerUnauthenticated     UNAUTHENTICATED, CALLER_UNAUTHENTICATED
 *   │   └── CallerForbidden           PERMISSION_DENIED, CALLER_FORBIDDEN
 *   ├── DeadlineExceeded              DEADLINE_EXCEEDED (the call's deadline passed)
 *   └── InternalError                 INTERNAL, and any status this client does not know
 *
 * A reason this client version does not know (a newer service) becomes the class of its gRPC
 * code, with `.reason` still the one the service sent. A known reason under an unexpected code
 * is a protocol surprise: the code is trusted. This module is the only place that reads
 * `grpc-status-details-bin`.
 */

const { status: Status } = require('@grpc/grpc-js');
const protobuf = require('protobufjs');

const DOMAIN = 'wxlogin';
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

// The two google.rpc messages we read, by field number (google/rpc/status.proto and
// error_details.proto); declared here so the package needs no copy of googleapis.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: { nested: { Any: { fields: { typeUrl: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } } } },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const RpcStatus = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');

const CODE_NAMES = Object.freeze(
  Object.fromEntries(
    Object.entries(Status)
      .filter(([name, value]) => typeof value === 'number' && /^[A-Z_]+$/.test(name))
      .map(([name, value]) => [value, name]),
  ),
);

/** A failed wxlogin call. Branch on the class (or `.reason`), never on `.message`. */
class WxLoginError extends Error {
  constructor(message = '', { reason, metadata } = {}) {
    const ownReason = reason || new.target.defaultReason;
    super(message || ownReason);
    this.name = new.target.name;
    this.reason = ownReason;
    this.metadata = { ...(metadata || {}) };
  }

  /** The gRPC status code's name, e.g. "UNAUTHENTICATED" (as in the JSON error body). */
  get code() {
    return this.constructor.code;
  }

  /** The gRPC status code's number (`@grpc/grpc-js`'s `status`). */
  get grpcCode() {
    return Status[this.constructor.code];
  }
}
WxLoginError.code = 'INTERNAL';
WxLoginError.defaultReason = 'INTERNAL';
// null: the HTTP status follows from `code` (lib/http-errors.js).
WxLoginError.httpStatus = null;

/** Declares one class of the tree: its parent, and what it overrides. */
function kind(name, parent, { code, reason, httpStatus } = {}) {
  const made = { [name]: class extends parent {} }[name];
  if (code !== undefined) made.code = code;
  if (reason !== undefined) made.defaultReason = reason;
  if (httpStatus !== undefined) made.httpStatus = httpStatus;
  return made;
}

const InvalidRequest = kind('InvalidRequest', WxLoginError, { code: 'INVALID_ARGUMENT', reason: 'BAD_REQUEST' });
const BadRequest = kind('BadRequest', InvalidRequest, { reason: 'BAD_REQUEST' });
const AppUnknown = kind('AppUnknown', InvalidRequest, { reason: 'APP_UNKNOWN' });
const DecryptFailed = kind('DecryptFailed', InvalidRequest, { reason: 'DECRYPT_FAILED' });
const WatermarkExpired = kind('WatermarkExpired', InvalidRequest, { reason: 'WATERMARK_EXPIRED' });
const SignatureMismatch = kind('SignatureMismatch', InvalidRequest, { reason: 'SIGNATURE_MISMATCH' });

const Unauthenticated = kind('Unauthenticated', WxLoginError, { code: 'UNAUTHENTICATED', reason: 'SESSION_INVALID' });
const CodeInvalid = kind('CodeInvalid', Unauthenticated, { reason: 'CODE_INVALID' });
const CodeUsed = kind('CodeUsed', Unauthenticated, { reason: 'CODE_USED' });
const SessionInvalid = kind('SessionInvalid', Unauthenticated, { reason: 'SESSION_INVALID' });
const SessionExpired = kind('SessionExpired', Unauthenticated, { reason: 'SESSION_EXPIRED' });

const PermissionDenied = kind('PermissionDenied', WxLoginError, { code: 'PERMISSION_DENIED', reason: 'PERMISSION_DENIED' });
const UserBlocked = kind('UserBlocked', PermissionDenied, { reason: 'USER_BLOCKED' });
const WatermarkMismatch = kind('WatermarkMismatch', PermissionDenied, { reason: 'WATERMARK_MISMATCH' });
const CodeUserMismatch = kind('CodeUserMismatch', PermissionDenied, { reason: 'CODE_USER_MISMATCH' });

const FailedPrecondition = kind('FailedPrecondition', WxLoginError, { code: 'FAILED_PRECONDITION', reason: 'FAILED_PRECONDITION' });
const SessionKeyStale = kind('SessionKeyStale', FailedPrecondition, { reason: 'SESSION_KEY_STALE' });

const RateLimited = kind('RateLimited', WxLoginError, { code: 'RESOURCE_EXHAUSTED', reason: 'RATE_LIMITED' });
const Overloaded = kind('Overloaded', RateLimited, { reason: 'OVERLOADED' });

const Unavailable = kind('Unavailable', WxLoginError, { code: 'UNAVAILABLE', reason: 'SERVICE_UNAVAILABLE' });
const WeChatUnavailable = kind('WeChatUnavailable', Unavailable, { reason: 'WECHAT_UNAVAILABLE' });
const WeChatError = kind('WeChatError', Unavailable, { reason: 'WECHAT_ERROR' });
const StoreUnavailable = kind('StoreUnavailable', Unavailable, { reason: 'STORE_UNAVAILABLE' });
const ServiceUnavailable = kind('ServiceUnavailable', Unavailable, { reason: 'SERVICE_UNAVAILABLE' });

// wxlogin refused *this backend* (its caller key, certificate or grant), not the user. Not an
// Unauthenticated: code that sends users to log in again on those must not do so for our own
// misconfiguration, which no login fixes. Over HTTP it is a 500.
const CallerError = kind('CallerError', WxLoginError, { httpStatus: 500 });
const CallerUnauthenticated = kind('CallerUnauthenticated', CallerError, { code: 'UNAUTHENTICATED', reason: 'CALLER_UNAUTHENTICATED' });
const CallerForbidden = kind('CallerForbidden', CallerError, { code: 'PERMISSION_DENIED', reason: 'CALLER_FORBIDDEN' });

const DeadlineExceeded = kind('DeadlineExceeded', WxLoginError, { code: 'DEADLINE_EXCEEDED', reason: 'DEADLINE_EXCEEDED' });
const InternalError = kind('InternalError', WxLoginError, { code: 'INTERNAL', reason: 'INTERNAL' });

// The one table from reason to class; the groups below are the fallback for a reason this
// version does not know.
const BY_REASON = new Map(
  [
    BadRequest, AppUnknown, DecryptFailed, WatermarkExpired, SignatureMismatch,
    CodeInvalid, CodeUsed, SessionInvalid, SessionExpired,
    UserBlocked, WatermarkMismatch, CodeUserMismatch,
    SessionKeyStale,
    RateLimited, Overloaded,
    WeChatUnavailable, WeChatError, StoreUnavailable, ServiceUnavailable,
    CallerUnauthenticated, CallerForbidden,
    DeadlineExceeded, InternalError,
  ].map((cls) => [cls.defaultReason, cls]),
);
const BY_CODE = new Map(
  [InvalidRequest, Unauthenticated, PermissionDenied, FailedPrecondition, RateLimited, Unavailable, DeadlineExceeded].map(
    (cls) => [cls.code, cls],
  ),
);
// No ErrorInfo means wxlogin never answered: grpc's own text names hosts and ports, so callers
// (and their HTTP clients) get these words instead.
const NO_ANSWER = new Map([
  ['UNAVAILABLE', [ServiceUnavailable, 'wxlogin is unreachable; retry later']],
  ['DEADLINE_EXCEEDED', [DeadlineExceeded, 'wxlogin did not answer in time']],
]);

/** The error for a status code name and, when wxlogin sent one, its ErrorInfo reason. */
function errorFor(code, reason, message = '') {
  if (reason == null) {
    const [cls, text] = NO_ANSWER.get(code) || [BY_CODE.get(code) || InternalError, `wxlogin call failed (${code})`];
    return new cls(text);
  }
  const known = BY_REASON.get(reason);
  if (known !== undefined && known.code === code) return new known(message, { reason });
  return new (BY_CODE.get(code) || InternalError)(message, { reason });
}

/** The wxlogin ErrorInfo in a grpc-js error's trailers: { reason, metadata }, or null. */
function errorInfo(metadata) {
  const values = metadata && typeof metadata.get === 'function' ? metadata.get(STATUS_DETAILS_KEY) : [];
  for (const value of values) {
    if (!Buffer.isBuffer(value)) continue;
    let status;
    try {
      status = RpcStatus.decode(value);
    } catch {
      return null; // a garbled detail is as good as none
    }
    for (const detail of status.details) {
      if (detail.typeUrl !== ERROR_INFO_TYPE) continue;
      let info;
      try {
        info = ErrorInfo.decode(detail.value);
      } catch {
        continue;
      }
      if (info.domain === DOMAIN) return { reason: info.reason, metadata: { ...info.metadata } };
    }
  }
  return null;
}

/** Turn a failed grpc-js call (a ServiceError) into the error for its code and ErrorInfo reason. */
function fromServiceError(error) {
  const code = CODE_NAMES[error.code] || 'UNKNOWN';
  const info = errorInfo(error.metadata);
  const made = errorFor(code, info ? info.reason : null, error.details || '');
  if (info) Object.assign(made.metadata, info.metadata);
  return made;
}

module.exports = {
  DOMAIN,
  BY_REASON,
  errorFor,
  fromServiceError,
  WxLoginError,
  InvalidRequest, BadRequest, AppUnknown, DecryptFailed, WatermarkExpired, SignatureMismatch,
  Unauthenticated, CodeInvalid, CodeUsed, SessionInvalid, SessionExpired,
  PermissionDenied, UserBlocked, WatermarkMismatch, CodeUserMismatch,
  FailedPrecondition, SessionKeyStale,
  RateLimited, Overloaded,
  Unavailable, WeChatUnavailable, WeChatError, StoreUnavailable, ServiceUnavailable,
  CallerError, CallerUnauthenticated, CallerForbidden,
  DeadlineExceeded, InternalError,
};
