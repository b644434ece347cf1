// An OAuth 2.0 access token kept between calls (RFC 6749 §5.1: access_token + expires_in) and
// fetched again shortly before it expires — on its lifetime, not on a 401 (HubSpot: "401
// requests are not a valid indicator that a new access token must be retrieved"). One fetch
// at a time: callers that need a token while one is being fetched wait for that fetch. A
// failed fetch is not cached; the next caller tries again.
//
// How the token is fetched (client credentials, refresh token, JWT bearer…) is the caller's
// `fetch`; this module only keeps and shares what it returns.

export interface FetchedToken {
  accessToken: string;
  /** Lifetime from now, seconds (expires_in). */
  expiresInSeconds: number;
}

export interface TokenCacheOptions {
  /** Epoch ms. */
  now: () => number;
  /** Fetch a new token this long before the old one expires, ms. Default 60,000. */
  refreshBeforeMs?: number;
}

export class TokenCache {
  readonly #fetch: (signal?: AbortSignal) => Promise<FetchedToken>;
  readonly #now: () => number;
  readonly #refreshBeforeMs: number;
  #token: { value: string; expiresAtMs: number } | undefined;
  #pending: Promise<string> | undefined;

  constructor(fetch: (signal?: AbortSignal) => Promise<FetchedToken>, options: TokenCacheOptions) {
    this.#fetch = fetch;
    this.#now = options.now;
    this.#refreshBeforeMs = options.refreshBeforeMs ?? 60_000;
  }

  /** A token valid for at least refreshBeforeMs more, fetched when needed. */
  async get(signal?: AbortSignal): Promise<string> {
    const token = this.#token;
    if (token !== undefined && this.#now() < token.expiresAtMs - this.#refreshBeforeMs) return token.value;
    this.#pending ??= this.#refresh(signal).finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  /** Forget the kept token (e.g. revoked): the next get() fetches one. */
  invalidate(): void {
    this.#token = undefined;
  }

  async #refresh(signal?: AbortSignal): Promise<string> {
    const fetched = await this.#fetch(signal);
    if (fetched.accessToken === '' || !(fetched.expiresInSeconds > 0)) throw new Error('the token endpoint answered without an access token or a lifetime');
    this.#token = { value: fetched.accessToken, expiresAtMs: this.#now() + fetched.expiresInSeconds * 1000 };
    return fetched.accessToken;
  }
}
