// A TypeScript backend as a team would write it: compiled (never run) by `tsc --noEmit -p test/`
// to check that index.d.ts describes the package's surface and rejects misuse.
import * as http from 'node:http';
import {
  bearerAuth,
  CallerError,
  connect,
  SessionCache,
  SessionExpired,
  upstreamFromEnv,
  WxLoginError,
  type AccessToken,
  type PhoneNumber,
  type Request,
  type Session,
  type User,
} from '..';

const { target, ...options } = upstreamFromEnv(process.env);
const client = connect(target, {
  ...options,
  deadlines: { checkSession: 1500 },
  sessionCache: new SessionCache({ maxAgeMs: 1000, maxEntries: 5000 }),
});
// @ts-expect-error: a cache's age is a number of milliseconds
new SessionCache({ maxAgeMs: '2s' });
const auth = bearerAuth(client, { public: (req) => req.url === '/healthz' });

http.createServer((req, res) => {
  void auth(req, res, (error) => {
    if (error) {
      res.writeHead(500).end();
      return;
    }
    const user: User | undefined = (req as Request).wxloginUser;
    res.end(JSON.stringify({ userId: user?.userId, unionid: user?.unionid ?? null }));
  });
});

export async function whoIs(token: string): Promise<string> {
  try {
    const session: Session = await client.checkSession(token, { deadlineMs: 500, requestId: 'r-1' });
    const expires: Date = session.expiresAt;
    // @ts-expect-error: a session is frozen (with a cache, every caller of the token shares it)
    session.user.openid = 'someone else';
    return `${session.user.openid} until ${expires.toISOString()}`;
  } catch (error) {
    if (error instanceof SessionExpired) return 'log in again';
    if (error instanceof CallerError) return `misconfigured backend: ${error.reason}`;
    if (error instanceof WxLoginError) return `${error.code} ${error.reason} ${error.metadata.errcode ?? ''}`;
    throw error;
  }
}

export async function rest(token: string): Promise<number> {
  const login = await client.login('code', { appId: 'wx0' });
  const data = await client.decryptUserData(login.token, { encryptedData: 'e', iv: 'i', code: 'c' });
  const when: Date | null = data.watermarkTime;
  await client.revokeSession(token);
  void when;
  // @ts-expect-error: exactly one of token and userId
  await client.revokeAllSessions({ token, userId: 'u' });
  // @ts-expect-error: deadlines are numbers of milliseconds
  connect(target, { deadlines: { checkSession: '2s' } });
  return client.revokeAllSessions({ token });
}

export async function wechatApis(token: string): Promise<string> {
  const number: PhoneNumber = await client.getPhoneNumber(token, 'phone-code', { deadlineMs: 3000 });
  const valid: boolean = await client.checkSessionKey(token);
  await client.resetSessionKey(token);
  const access: AccessToken = await client.getAccessToken('wx0', { rejectedToken: 'old' });
  // @ts-expect-error: the phone code is required
  await client.getPhoneNumber(token);
  return `${number.purePhoneNumber} ${valid} ${access.expiresAt?.toISOString() ?? ''}`;
}
