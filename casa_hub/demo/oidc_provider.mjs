#!/usr/bin/env node
// casa_hub demo identity provider: a small, real OpenID Connect provider
// (npm package `oidc-provider` v9) for the local demo and automated tests.
//
//   node oidc_provider.mjs CONFIG.json
//
// Config keys: issuer (http://127.0.0.1:PORT, required), clients (required),
// users (required), access_token_ttl, id_token_ttl, refresh_token_ttl,
// clock_tolerance, jwks (private JWKS), jwks_file, cookie_keys, claims, storage_file,
// userinfo_only_claims (claim names released by userinfo only, never in ID tokens).
// A user is {username, password, name, email, groups}, optionally with "sub"
// (default: the username) and "claims" (merged over the others; null removes one).
// "claims" maps each scope to the claim names it releases (default below).
// Relative jwks_file and storage_file paths are resolved against the config file's directory.
// Listens on 127.0.0.1 only. State (sessions, grants, codes, access and refresh
// tokens) is kept in memory and lost on exit, unless "storage_file" names a file
// (mode 0600) in which it is kept across restarts.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

// ESM imports ignore NODE_PATH, so fall back to resolving the package from the
// node_modules directories listed in CASA_NODE_MODULES (or NODE_PATH).
async function loadProvider() {
  try {
    return (await import('oidc-provider')).default;
  } catch (err) {
    if (err.code !== 'ERR_MODULE_NOT_FOUND') throw err;
  }
  const dirs = [process.env.CASA_NODE_MODULES, process.env.NODE_PATH]
    .flatMap((v) => (v || '').split(path.delimiter)).filter(Boolean);
  for (const dir of dirs) {
    let resolved;
    try { resolved = createRequire(path.join(path.resolve(dir), 'noop.js')).resolve('oidc-provider'); } catch { continue; }
    return (await import(pathToFileURL(resolved).href)).default;
  }
  throw new Error('cannot find npm package oidc-provider; set CASA_NODE_MODULES to a node_modules dir');
}

// ---------------------------------------------------------------- config
const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node oidc_provider.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const issuerUrl = new URL(config.issuer);
if (issuerUrl.pathname !== '/') throw new Error('issuer must not have a path component');
const port = Number(issuerUrl.port || (issuerUrl.protocol === 'https:' ? 443 : 80));
const users = new Map((config.users || []).map((u) => [String(u.username), u]));
const userinfoOnly = new Set(config.userinfo_only_claims ?? []);
const accounts = new Map((config.users || []).map((u) => [String(u.sub ?? u.username), u]));
const scopeClaims = config.claims ?? {
  openid: ['sub'],
  profile: ['name', 'preferred_username'],
  email: ['email'],
  groups: ['groups'],
};
const accessTtl = config.access_token_ttl ?? 600;
const idTtl = config.id_token_ttl ?? 600;
const refreshTtl = config.refresh_token_ttl ?? 86400;

// Signing keys: inline "jwks", else "jwks_file" (created with mode 0600 on the
// first run and reused afterwards), else one ephemeral RSA key.
function newSigningJwks() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: crypto.randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' }] };
}
function loadJwks() {
  if (config.jwks) return config.jwks;
  if (!config.jwks_file) return newSigningJwks();
  const file = path.resolve(path.dirname(configPath), config.jwks_file);
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const jwks = newSigningJwks();
  fs.writeFileSync(file, JSON.stringify(jwks), { mode: 0o600, flag: 'wx' });
  return jwks;
}

// ---------------------------------------------------------------- storage
// With "storage_file" a restarted provider still knows its sessions, grants and
// tokens (a refresh token issued before the restart keeps working): every change
// is appended to the file as one JSON line; at start the file is replayed and
// compacted. Without it, oidc-provider's in-memory adapter is used.
class FileStore {
  constructor(file) {
    this.file = file;
    this.entries = new Map(); // key -> { value, exp: ms since the epoch or null }
    const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    for (const line of text.split('\n')) {
      let rec;
      try { rec = JSON.parse(line); } catch { continue; } // empty or torn line
      if (rec.v === undefined) this.entries.delete(rec.k);
      else this.entries.set(rec.k, { value: rec.v, exp: rec.e ?? null });
    }
    this.compact();
  }

  live(key) {
    const entry = this.entries.get(key);
    if (entry && entry.exp !== null && entry.exp <= Date.now()) this.delete(key);
    else return entry;
    return undefined;
  }

  get(key) { return this.live(key)?.value; }

  set(key, value, exp) {
    this.entries.set(key, { value, exp });
    this.append({ k: key, v: value, e: exp });
  }

  delete(key) {
    if (this.entries.delete(key)) this.append({ k: key });
  }

  keys(prefix) { return [...this.entries.keys()].filter((k) => k.startsWith(prefix)); }

  append(rec) {
    fs.appendFileSync(this.file, `${JSON.stringify(rec)}\n`, { mode: 0o600 });
    this.lines += 1;
    if (this.lines > 1000 + 4 * this.entries.size) this.compact();
  }

  compact() {
    const now = Date.now();
    this.entries = new Map([...this.entries].filter(([, e]) => e.exp === null || e.exp > now));
    const tmp = `${this.file}.tmp`;
    const lines = [...this.entries].map(([k, e]) => `${JSON.stringify({ k, v: e.value, e: e.exp })}\n`);
    fs.writeFileSync(tmp, lines.join(''), { mode: 0o600 });
    fs.renameSync(tmp, this.file);
    this.lines = lines.length;
  }
}

// The adapter interface of oidc-provider, on a FileStore (one per provider).
const GRANT_MEMBERS = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest']);
class FileAdapter {
  constructor(model, store, toleranceSeconds) {
    Object.assign(this, { model, store, toleranceSeconds });
  }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const exp = typeof expiresIn === 'number' ? Date.now() + (expiresIn + this.toleranceSeconds) * 1000 : null;
    this.store.set(this.key(id), payload, exp);
  }

  async find(id) { return this.store.get(this.key(id)); }

  async findBy(field, value) {
    for (const key of this.store.keys(`${this.model}:`)) {
      const payload = this.store.get(key);
      if (payload && payload[field] === value) return payload;
    }
    return undefined;
  }

  async findByUid(uid) { return this.findBy('uid', uid); }

  async findByUserCode(userCode) { return this.findBy('userCode', userCode); }

  async consume(id) {
    const entry = this.store.live(this.key(id));
    if (entry) this.store.set(this.key(id), { ...entry.value, consumed: Math.floor(Date.now() / 1000) }, entry.exp);
  }

  async destroy(id) { this.store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const model of GRANT_MEMBERS) {
      for (const key of this.store.keys(`${model}:`)) {
        if (this.store.get(key)?.grantId === grantId) this.store.delete(key);
      }
    }
  }
}

function storageAdapter() {
  if (!config.storage_file) return undefined; // oidc-provider's in-memory adapter
  const store = new FileStore(path.resolve(path.dirname(configPath), config.storage_file));
  return (model) => new FileAdapter(model, store, config.clock_tolerance ?? 0);
}

// ---------------------------------------------------------------- helpers
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
// Usernames come from a form: keep log lines single-line and unambiguous.
const logName = (s) => String(s ?? '').slice(0, 64).replace(/[^\w.@+-]/g, '?');
const sha = (s) => crypto.createHash('sha256').update(String(s ?? '')).digest();

// Constant-time password check; unknown users cost the same as known ones.
function checkPassword(username, password) {
  const user = users.get(String(username ?? ''));
  const ok = crypto.timingSafeEqual(sha(user ? user.password : crypto.randomUUID()), sha(password));
  return user && ok ? user : undefined;
}

function page(res, status, title, body) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>${esc(title)}</h1>${body}</body></html>`);
}

function loginPage(res, uid, { username = '', error = '' } = {}) {
  page(res, 200, 'casa_hub demo identity provider', `
${error ? `<p role="alert" class="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <p><label for="username">Username</label>
     <input id="username" name="username" value="${esc(username)}" required autofocus></p>
  <p><label for="password">Password</label>
     <input id="password" name="password" type="password" required></p>
  <button type="submit">Sign in</button>
</form>`);
}

async function readForm(req, limit = 64 * 1024) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > limit) throw new Error('request body too large');
  }
  return new URLSearchParams(body);
}

// ---------------------------------------------------------------- provider
const Provider = await loadProvider();

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...c,
  })),
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  jwks: loadJwks(),
  adapter: storageAdapter(),
  cookies: { keys: config.cookie_keys || [crypto.randomBytes(32).toString('hex')] },
  scopes: [...new Set(['openid', 'offline_access', ...Object.keys(scopeClaims)])],
  claims: scopeClaims,
  conformIdTokenClaims: false, // scope-derived claims go into the ID token too
  clockTolerance: config.clock_tolerance ?? 0,
  pkce: { required: () => true }, // v9 only supports S256
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTtl,
    IdToken: idTtl,
    RefreshToken: refreshTtl,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: Math.max(refreshTtl, 86400),
    Grant: Math.max(refreshTtl, 86400),
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
    introspection: { enabled: true, allowedPolicy: async () => true },
    rpInitiatedLogout: {
      enabled: true,
      // Auto-submitting "log out everywhere" form; the button is the no-JS fallback.
      logoutSource: async (ctx, form) => {
        ctx.type = 'html';
        ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8">
<title>casa_hub demo identity provider - sign out</title></head><body>
${form.replace('</form>', '<input type="hidden" name="logout" value="yes"/><button type="submit">Sign out</button></form>')}
<script>document.getElementById('op.logoutForm').submit();</script></body></html>`;
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.type = 'html';
        ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed out</title></head><body><p>You have been signed out.</p></body></html>';
      },
    },
  },
  findAccount: async (ctx, sub) => {
    const user = accounts.get(sub);
    if (!user) return undefined;
    const claims = {
      preferred_username: String(user.username),
      name: user.name ?? String(user.username),
      email: user.email,
      groups: user.groups ?? [],
      ...user.claims,
      sub,
    };
    return {
      accountId: sub,
      // claims named in "userinfo_only_claims" go to userinfo, never into ID tokens (some
      // providers release groups that way)
      claims: async (use) => Object.fromEntries(Object.entries(claims).filter(
        ([k, v]) => v != null && !(use === 'id_token' && userinfoOnly.has(k)))),
    };
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Error</title></head><body>
<h1>casa_hub demo identity provider: error</h1><pre>${esc(out.error)}: ${esc(out.error_description)}</pre></body></html>`;
  },
});
provider.proxy = false; // plain http on loopback, no reverse proxy headers

// ---------------------------------------------------------------- interactions
// Consent is granted automatically: every requested scope / claim is approved.
async function autoConsent(req, res, details) {
  const { prompt, params, session, grantId } = details;
  const grant = (grantId && await provider.Grant.find(grantId))
    || new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const savedId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId: savedId } }, { mergeWithLastSubmission: true });
}

async function handleInteraction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 400, 'Error', '<p>Unknown or expired login request.</p>');
  const promptName = details.prompt.name;

  if (req.method === 'GET' && !action) {
    if (promptName === 'consent') return autoConsent(req, res, details);
    return loginPage(res, uid);
  }
  if (req.method === 'POST' && action === 'login' && promptName === 'login') {
    const form = await readForm(req);
    const username = form.get('username') ?? '';
    const user = checkPassword(username, form.get('password'));
    if (!user) {
      console.log(`login failed user=${logName(username)}`);
      return loginPage(res, uid, { username, error: 'Invalid username or password' });
    }
    console.log(`login ok user=${logName(user.username)}`);
    const result = { login: { accountId: String(user.sub ?? user.username) } };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  return page(res, 405, 'Error', '<p>Unsupported request.</p>');
}

// ---------------------------------------------------------------- server
const providerCallback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const { pathname } = new URL(req.url, config.issuer);
    if (pathname === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      return res.end('ok');
    }
    const m = pathname.match(/^\/interaction\/([\w-]+)(?:\/(login))?$/);
    if (m) return await handleInteraction(req, res, m[1], m[2]);
    return providerCallback(req, res);
  } catch (err) {
    // SessionNotFound etc.: the interaction cookie is missing or expired.
    console.error(`interaction error: ${err.name}: ${err.error_description || err.message}`);
    if (!res.headersSent) page(res, 400, 'Error', '<p>Your login request has expired. Please start again.</p>');
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`casa_hub demo OIDC provider listening issuer=${config.issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
