// The gateway's HTTP API as the console uses it: every call carries the signed-in operator's
// bearer token, and every failure becomes an ApiError whose message is the API's own
// ({"status": "error", "message": ..., "status_code": ...}) or says what else went wrong.

export class ApiError extends Error {
  /** status: the HTTP status, or 0 when the gateway could not be reached at all. */
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export class Api {
  /**
   * session.token(forceRefresh): the bearer token to send, or null (a promise: the Firebase SDK
   * hands out a fresh ID token when the one it holds is about to expire);
   * session.refreshable(): whether a forced refresh could give another token;
   * onUnauthorized(error): called on a 401 that a fresh token did not cure.
   */
  constructor(session, onUnauthorized = () => {}) {
    this.session = session;
    this.onUnauthorized = onUnauthorized;
  }

  /** GET/POST a path of the gateway's API; resolves to the parsed JSON body. */
  async request(method, path, { query, body, retryUnauthorized = true } = {}) {
    const url = new URL(path, location.origin);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
    }
    const token = await this.session.token(!retryUnauthorized);
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiError(0, `The gateway could not be reached (${error.message}).`);
    }
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON (a proxy's error page): its status line says more than its HTML would.
    }
    if (response.ok) return parsed;
    // A Firebase ID token minted before the admin claim was set lacks it: ask once for a
    // fresh one before giving up.
    if (response.status === 401 && retryUnauthorized && this.session.refreshable()) {
      return this.request(method, path, { query, body, retryUnauthorized: false });
    }
    const message =
      (parsed && typeof parsed.message === "string" && parsed.message) ||
      `${response.status} ${response.statusText || "error"}`.trim();
    const error = new ApiError(response.status, message);
    if (response.status === 401) this.onUnauthorized(error);
    throw error;
  }

  get(path, query) {
    return this.request("GET", path, { query });
  }

  post(path, body, query) {
    return this.request("POST", path, { body, query });
  }
}

/** A path segment from user input (ids may hold characters a URL gives meaning to). */
export const segment = (value) => encodeURIComponent(value);
