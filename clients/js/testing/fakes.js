// Test doubles for the unit tests: a fake clock (timers that run only when told), a fake
// WebSocket driven from the test as if it were the gateway, and unsigned JWTs.
// Kept outside test/ so that `node --test` does not run this file as a test.

import { PresenceClient } from "../presence-client.js";

/** Lets pending promise callbacks (an awaited getToken) run. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.time = start;
    this.timers = new Map();
    this.seq = 0;
    this.setTimeout = (fn, ms = 0) => {
      const id = ++this.seq;
      this.timers.set(id, { at: this.time + Math.max(0, ms), fn, ms });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
    this.now = () => this.time;
  }

  /** Delays of the timers still pending, in the order they were set. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms);
  }

  /** Move time forward by `ms`, running each timer due on the way (in due order). */
  async advance(ms) {
    const target = this.time + ms;
    for (;;) {
      let nextId = null;
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= target && (next === null || t.at < next.at)) {
          nextId = id;
          next = t;
        }
      }
      if (next === null) break;
      this.timers.delete(nextId);
      this.time = next.at;
      next.fn();
      await flush();
    }
    this.time = target;
    await flush();
  }

  /** Run the earliest pending timer; returns its delay. */
  async runNext() {
    let nextId = null;
    let next = null;
    for (const [id, t] of this.timers) {
      if (next === null || t.at < next.at) {
        nextId = id;
        next = t;
      }
    }
    if (next === null) throw new Error("no timer pending");
    this.timers.delete(nextId);
    this.time = Math.max(this.time, next.at);
    next.fn();
    await flush();
    return next.ms;
  }
}

/** A WebSocket class whose instances the test drives as the gateway would. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState === 0) throw new Error("InvalidStateError: still connecting");
      if (this.readyState !== 1) return; // browsers drop frames on a closing socket
      this.sent.push(text);
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // --- the gateway's side ---

    open() {
      this.readyState = 1;
      this.onopen?.({ type: "open" });
    }

    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    frames() {
      return this.sent.map((text) => JSON.parse(text));
    }

    get token() {
      return new URL(this.url).searchParams.get("token");
    }
  }
  return { FakeWebSocket, sockets };
}

/** An unsigned JWT with the given claims (what the client decodes; it never verifies). */
export function jwt(claims) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  return `${part({ alg: "none", typ: "JWT" })}.${part(claims)}.sig`;
}

/**
 * A client wired to fakes. `tokens` is a list of tokens handed out in turn (the last one
 * repeats); every getToken call is recorded in `tokenCalls`.
 */
export function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const tokenCalls = [];
  let issued = 0;
  const tokenFactory =
    options.tokenFactory ??
    (() => jwt({ sub: "user-1", iat: clock.now() / 1000, exp: clock.now() / 1000 + 3600, n: ++issued }));
  const events = [];
  const client = new PresenceClient({
    url: "ws://gateway.test:8000",
    userId: "user-1",
    getToken: async (args) => {
      tokenCalls.push(args);
      return tokenFactory(args);
    },
    WebSocket: FakeWebSocket,
    random: () => 1,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    ...options.client,
  });
  for (const name of [
    "state",
    "connecting",
    "connected",
    "disconnected",
    "signedOut",
    "authError",
    "ping",
    "pong",
    "overflow",
    "tokenRefreshed",
    "error",
  ]) {
    client.on(name, (payload) => events.push({ name, payload }));
  }
  const last = () => sockets[sockets.length - 1];
  const named = (name) => events.filter((e) => e.name === name).map((e) => e.payload);
  /** Connect and open the socket (as the gateway accepting it). */
  async function connectOpen() {
    client.connect();
    await flush();
    last().open();
    return last();
  }
  return { client, clock, sockets, last, events, named, tokenCalls, connectOpen, FakeWebSocket };
}
