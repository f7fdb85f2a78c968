// Type declarations of @wxlogin/client (hand-written; test/types.ts is checked against them by
// `tsc --noEmit -p test/`, which tests/test_node_client.py runs).
/// <reference types="node" />

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ChannelOptions, Metadata } from '@grpc/grpc-js';

/** A user of one mini-program. */
export interface User {
  userId: string;
  appId: string;
  openid: string;
  /** null when WeChat gave none. */
  unionid: string | null;
  /** The same for every user of wxlogin's apps with the same unionid; userId while there is none. */
  accountId: string;
}

/** A live session behind a token (frozen: with a SessionCache, callers of a token share it). */
export interface Session {
  readonly user: Readonly<User>;
  readonly expiresAt: Date;
}

/** A new session. The token goes to the mini-program and nowhere else (util.inspect hides it). */
export interface LoginResult {
  token: string;
  expiresAt: Date;
  user: User;
  /** True only for the login that created the user. */
  newUser: boolean;
}

/** WeChat's decrypted encryptedData (watermark included) and its watermark time. */
export interface UserData {
  data: Record<string, unknown>;
  watermarkTime: Date | null;
}

/** What the mini-program got from WeChat (the field names are WeChat's own), and optionally a fresh code. */
export interface EncryptedUserData {
  encryptedData: string;
  iv: string;
  rawData?: string;
  signature?: string;
  /** A fresh wx.login() code fetched just before the data: never meet SessionKeyStale. */
  code?: string;
}

/** TLS to wxlogin: roots to trust (omitted: the system's) and optionally a client certificate (mTLS). */
export interface TlsConfig {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** Milliseconds each call may take in all, retries included. */
export interface Deadlines {
  login: number;
  checkSession: number;
  decryptUserData: number;
  revokeSession: number;
  revokeAllSessions: number;
  getPhoneNumber: number;
  getAccessToken: number;
  checkSessionKey: number;
  resetSessionKey: number;
}

/** The session user's phone number (from a getPhoneNumber button's code) and its watermark time. */
export interface PhoneNumber {
  phoneNumber: string;
  purePhoneNumber: string;
  countryCode: string;
  watermarkTime: Date | null;
}

/** The app's WeChat access_token: the same one for every backend until it expires. */
export interface AccessToken {
  accessToken: string;
  expiresAt: Date | null;
}

/** Retries of idempotent calls on UNAVAILABLE: full-jitter exponential backoff. */
export interface RetryPolicy {
  /** In all, the first included; 1 turns retries off. */
  attempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
}

export interface ClientOptions {
  tls?: TlsConfig;
  /** Sent as metadata x-wxlogin-caller-key with every call: 16-256 printable ASCII, no spaces. */
  callerKey?: string;
  deadlines?: Partial<Deadlines>;
  retry?: Partial<RetryPolicy>;
  /** grpc-js channel options, over the client's defaults (quick reconnects, keepalive). */
  channelOptions?: ChannelOptions;
  /** Opt-in: checkSession answers from this memory for up to its maxAgeMs (see SessionCache). */
  sessionCache?: SessionCache;
}

export interface SessionCacheOptions {
  /** How long an answer is used after wxlogin gave it (default 2000); never past expiresAt. */
  maxAgeMs?: number;
  /** Least recently used entries beyond this are dropped (default 10000). */
  maxEntries?: number;
  /** Milliseconds on a clock that never goes back (tests). */
  monotonic?: () => number;
  /** Milliseconds since the epoch (tests). */
  now?: () => number;
}

/**
 * A short-lived memory of checkSession answers, keyed by SHA-256 digests (it holds no token).
 * A session revoked elsewhere stays accepted here for up to maxAgeMs; a revoke through the
 * same client drops it at once.
 */
export declare class SessionCache {
  constructor(options?: SessionCacheOptions);
  readonly maxAgeMs: number;
  readonly size: number;
  /** Moves on every drop; give the value taken before asking wxlogin to put(). */
  readonly generation: number;
  /** A new frozen object each time; null when unknown, stale or expired. */
  get(token: string): Session | null;
  /** Not remembered when a drop came since `generation`, or without a valid expiresAt. */
  put(token: string, session: Session, generation?: number): void;
  drop(token: string): void;
  dropUser(userId: string): void;
  clear(): void;
}

export interface CallOptions {
  /** This call's deadline in milliseconds, instead of the client's for the RPC. */
  deadlineMs?: number;
  /** Sent as x-request-id when it is 1-128 printable ASCII characters without spaces. */
  requestId?: string;
}

export declare const DEFAULT_DEADLINES: Readonly<Deadlines>;
export declare const DEFAULT_RETRY: Readonly<RetryPolicy>;
export declare const CALLER_KEY_METADATA: 'x-wxlogin-caller-key';
export declare const DOMAIN: 'wxlogin';

export declare class WxLoginClient {
  constructor(target: string, options?: ClientOptions);
  readonly deadlines: Readonly<Deadlines>;
  readonly sessionCache: SessionCache | null;
  readonly retry: Readonly<RetryPolicy>;
  /** Exchange a wx.login() code for a session; `appId` may be empty when one app is configured. */
  login(code: string, options?: CallOptions & { appId?: string }): Promise<LoginResult>;
  /** The user and expiry behind a token; rejects with SessionInvalid or SessionExpired otherwise. */
  checkSession(token: string, options?: CallOptions): Promise<Session>;
  decryptUserData(token: string, data: EncryptedUserData, options?: CallOptions): Promise<UserData>;
  /** Log out; unknown and already revoked tokens are fine. */
  revokeSession(token: string, options?: CallOptions): Promise<void>;
  /** Log a user out everywhere (by one of their live tokens, or by userId with that grant); how many ended. */
  revokeAllSessions(who: { token: string; userId?: never } | { userId: string; token?: never }, options?: CallOptions): Promise<number>;
  /** The session user's phone number for a getPhoneNumber button's code (single use; never retried). */
  getPhoneNumber(token: string, phoneCode: string, options?: CallOptions): Promise<PhoneNumber>;
  /** The app's access_token; pass the token WeChat refused (40001, 40014, 42001) as `rejectedToken`. */
  getAccessToken(appId?: string, options?: CallOptions & { rejectedToken?: string }): Promise<AccessToken>;
  /** Whether WeChat still holds the session_key wxlogin holds for this user. */
  checkSessionKey(token: string, options?: CallOptions): Promise<boolean>;
  /** Have WeChat replace the user's session_key (rejects with SessionKeyStale when it is no longer current). */
  resetSessionKey(token: string, options?: CallOptions): Promise<void>;
  close(): void;
}

/** A client with its own channel. Create one per process, share it, close() it on shutdown. */
export declare function connect(target: string, options?: ClientOptions): WxLoginClient;

/** What a backend needs to call wxlogin, from WXLOGIN_UPSTREAM, WXLOGIN_UPSTREAM_CA/_CERT/_KEY, WXLOGIN_CALLER_KEY. */
export interface Upstream {
  target: string;
  tls: TlsConfig | undefined;
  callerKey: string | undefined;
}
export declare function upstreamFromEnv(env?: Record<string, string | undefined>): Upstream;
export declare function tlsFromFiles(files?: { ca?: string; cert?: string; key?: string }): TlsConfig;
export declare function isCallerKey(value: unknown): value is string;
export declare class ConfigError extends Error {
  readonly variable: string;
}

export type Request = IncomingMessage & { wxloginUser?: User; wxloginSession?: Session };
export type Next = (error?: unknown) => void;

/**
 * Connect-style middleware (Express: `app.use(bearerAuth(client))`): req.wxloginUser for a live
 * session, else the JSON error answer of the Python bearer_auth (401, 503 when wxlogin is
 * unreachable, 504, 500 when wxlogin refuses this backend).
 */
export declare function bearerAuth(
  client: Pick<WxLoginClient, 'checkSession'>,
  options?: { public?: (req: IncomingMessage) => boolean },
): (req: IncomingMessage, res: ServerResponse, next: Next) => Promise<void> | void;

export declare function bearerToken(authorization: string | undefined | null): string | null;

export type StatusCodeName =
  | 'OK' | 'CANCELLED' | 'UNKNOWN' | 'INVALID_ARGUMENT' | 'DEADLINE_EXCEEDED' | 'NOT_FOUND'
  | 'ALREADY_EXISTS' | 'PERMISSION_DENIED' | 'RESOURCE_EXHAUSTED' | 'FAILED_PRECONDITION'
  | 'ABORTED' | 'OUT_OF_RANGE' | 'UNIMPLEMENTED' | 'INTERNAL' | 'UNAVAILABLE' | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

export interface ErrorBody {
  error: { code: StatusCodeName; reason: string; message: string };
}
export declare function httpStatus(error: WxLoginError): number;
export declare function errorBody(code: StatusCodeName, reason: string, message: string): ErrorBody;
export declare function sendError(res: ServerResponse, error: WxLoginError, headers?: Record<string, string>): void;

/** A failed wxlogin call. Branch on the class (or `.reason`), never on `.message`. */
export declare class WxLoginError extends Error {
  constructor(message?: string, options?: { reason?: string; metadata?: Record<string, string> });
  static readonly code: StatusCodeName;
  static readonly defaultReason: string;
  /** null: the HTTP status follows from the code. */
  static readonly httpStatus: number | null;
  /** The gRPC status code's name, as in the JSON error body. */
  readonly code: StatusCodeName;
  /** The gRPC status code's number. */
  readonly grpcCode: number;
  readonly reason: string;
  readonly metadata: Record<string, string>;
}
export declare class InvalidRequest extends WxLoginError {}
export declare class BadRequest extends InvalidRequest {}
export declare class AppUnknown extends InvalidRequest {}
export declare class DecryptFailed extends InvalidRequest {}
export declare class WatermarkExpired extends InvalidRequest {}
export declare class SignatureMismatch extends InvalidRequest {}
export declare class Unauthenticated extends WxLoginError {}
export declare class CodeInvalid extends Unauthenticated {}
export declare class CodeUsed extends Unauthenticated {}
export declare class SessionInvalid extends Unauthenticated {}
export declare class SessionExpired extends Unauthenticated {}
export declare class PermissionDenied extends WxLoginError {}
export declare class UserBlocked extends PermissionDenied {}
export declare class WatermarkMismatch extends PermissionDenied {}
export declare class CodeUserMismatch extends PermissionDenied {}
export declare class FailedPrecondition extends WxLoginError {}
export declare class SessionKeyStale extends FailedPrecondition {}
export declare class RateLimited extends WxLoginError {}
export declare class Overloaded extends RateLimited {}
export declare class Unavailable extends WxLoginError {}
export declare class WeChatUnavailable extends Unavailable {}
export declare class WeChatError extends Unavailable {}
export declare class StoreUnavailable extends Unavailable {}
export declare class ServiceUnavailable extends Unavailable {}
/** wxlogin refused this backend (caller key, certificate or grant), not the user: HTTP 500. */
export declare class CallerError extends WxLoginError {}
export declare class CallerUnauthenticated extends CallerError {}
export declare class CallerForbidden extends CallerError {}
export declare class DeadlineExceeded extends WxLoginError {}
export declare class InternalError extends WxLoginError {}

/** The one table from ErrorInfo reason to error class. */
export declare const BY_REASON: ReadonlyMap<string, typeof WxLoginError>;
/** The error for a status code name and, when wxlogin sent one, its ErrorInfo reason. */
export declare function errorFor(code: StatusCodeName, reason: string | null | undefined, message?: string): WxLoginError;
/** The error for a failed grpc-js call (its code, and the ErrorInfo in grpc-status-details-bin). */
export declare function fromServiceError(error: { code: number; details?: string; metadata?: Metadata }): WxLoginError;
