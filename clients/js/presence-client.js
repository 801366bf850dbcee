// @presence/client: a browser and Node client for the presence gateway's socket protocol.
//
// One ES module, no dependencies, no build step. See README.md beside this file for the
// options, the events and what the client does on each close code.

export const VERSION = "0.9.0";

/** Close codes: the gateway's (gateway/protocol/protocol.json, docs/protocol.md), then the three a
 * WebSocket reports on its own (1001, 1005, 1006). `WRONG_USER` is 4403's older name, kept. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  NO_STATUS: 1005,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  INVALID_USER_ID: 4400,
  UNAUTHENTICATED: 4401,
  FORBIDDEN: 4403,
  WRONG_USER: 4403,
  SESSION_EXPIRED: 4408,
  SIGNED_OUT: 4410,
  RATE_LIMITED: 4429,
});

/** The `type` of every frame the gateway sends (a backend's own messages have theirs). */
export const ServerFrameType = Object.freeze({
  PING: "ping",
  PONG: "pong",
  ACK: "ack",
  AUTH_OK: "auth_ok",
  TIMEOUT: "timeout",
  SIGNED_OUT: "signed_out",
  ERROR: "error",
  JOINED: "joined",
  LEFT: "left",
  STREAM: "stream",
  RECOVERY: "recovery",
  PRESENCE: "presence",
  PRESENCE_DIFF: "presence_diff",
  PUBLISH: "publish",
});

/** The client's states; the three after `reconnecting` are terminal until `connect()`. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  SIGNED_OUT: "signed_out",
  AUTH_ERROR: "auth_error",
  CLOSED: "closed",
});

export const SIGNED_OUT_REASON = "signed out for inactivity";
/** The reason when the service signed the user out (`signed_out` message, close 4410). */
export const SIGNED_OUT_BY_SERVICE_REASON = "signed out by the service";

export const DEFAULTS = Object.freeze({
  bufferSize: 100,
  backoff: Object.freeze({
    min: 500,
    max: 20_000,
    rateLimited: 5_000,
    restartJitter: 2_000,
    resetAfter: 10_000,
  }),
  tokenRefreshLead: 300_000,
  tokenRetryDelay: 30_000,
  rateLimit: Object.freeze({ perSecond: 10, burst: 20 }),
  maxMessageBytes: 65_536,
  connectTimeout: 15_000,
});

// A clean close with one of these codes means the gateway read none of the frames it did not
// acknowledge: it acks a message before handing it to the application, and an ack is sent
// before the close frame on the same ordered stream. Unacknowledged messages are resent.
const RESEND_AFTER = new Set([1000, 1001, 1005, 1012, 4401, 4429]);

const TERMINAL = new Set([State.SIGNED_OUT, State.AUTH_ERROR, State.CLOSED]);
const OPEN = 1;
const CONNECTING_READY_STATE = 0;

/** Why a `send()` promise was rejected: `code` says which case, `maybeDelivered` whether the
 * gateway may have handled the message all the same (the connection died before its ack). */
export class PresenceSendError extends Error {
  constructor(code, message, { id = null, data = undefined, maybeDelivered = false } = {}) {
    super(message);
    this.name = "PresenceSendError";
    this.code = code;
    this.id = id;
    this.data = data;
    this.maybeDelivered = maybeDelivered;
  }
}

/** Why a `join()` promise was rejected: `code` is the gateway's error code (`room_forbidden`,
 * `invalid_room`, `too_many_rooms`, `room_full`, `invalid_info`), the client's own
 * `invalid_info`, or the client's state when it stopped. */
export class PresenceRoomError extends Error {
  constructor(code, message, room) {
    super(message);
    this.name = "PresenceRoomError";
    this.code = code;
    this.room = room;
  }
}

/** The gateway's error codes whose frame names a room (docs/protocol.md, Errors): refusals of a
 * join, and of a publish (PUBLISH_ERRORS). */
export const ROOM_ERRORS = Object.freeze([
  "invalid_room", "room_forbidden", "too_many_rooms", "room_full", "invalid_info",
  "not_in_room", "publish_forbidden"
]);
/** The refusals of a publish: the socket is still in the room, so the room is kept. */
export const PUBLISH_ERRORS = Object.freeze(["not_in_room", "publish_forbidden"]);
const JOIN_REFUSALS = new Set(ROOM_ERRORS.filter((code) => !PUBLISH_ERRORS.includes(code)));

/** Full-jitter exponential backoff: random() * min(max, min0 * 2^attempt), in ms. */
export function backoffDelay(attempt, { min = 500, max = 20_000 } = {}, random = Math.random) {
  const cap = Math.min(max, min * 2 ** Math.max(0, attempt));
  return random() * cap;
}

/** The `exp` claim of a JWT in epoch milliseconds, or null. Not verified: the gateway verifies. */
export function tokenExpiry(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length < 2) return null;
  try {
    let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    b64 += "=".repeat((4 - (b64.length % 4)) % 4);
    const claims = JSON.parse(atob(b64));
    return typeof claims.exp === "number" && Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** How long to wait before refreshing a token that expires at `expiresAt` (ms): `lead` before
 * expiry, or halfway through what is left when less than twice `lead` is left. */
export function refreshDelay(expiresAt, now, lead = DEFAULTS.tokenRefreshLead) {
  const left = expiresAt - now;
  if (left <= 0) return 0;
  return left > 2 * lead ? left - lead : left / 2;
}

/** The socket URL for a gateway base URL (`ws://host:8000`, `https://…` is turned into `wss://`),
 * with the token and then `params` (a recovery's position) as query parameters. */
export function socketUrl(base, userId, token, params = null) {
  const root = String(base)
    .replace(/^http(s?):\/\//i, "ws$1://")
    .replace(/\/+$/, "");
  const path = `${root}/ws/connect/${encodeURIComponent(userId)}`;
  const query = token ? [`token=${encodeURIComponent(token)}`] : [];
  for (const [key, value] of Object.entries(params ?? {})) {
    query.push(`${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  }
  return query.length ? `${path}?${query.join("&")}` : path;
}

/**
 * A client's place in its durable stream: the epoch, the offset up to which every message was
 * processed, and the offsets above it already seen (live messages may arrive out of order when
 * several instances send, and during a recovery). No I/O.
 */
export class StreamPosition {
  /** Offsets seen above the contiguous one; past this the gap is given up (it is beyond any
   * recovery window by then). */
  static MAX_SEEN = 1000;

  constructor() {
    /** null until the gateway has said where the stream stands; "" for no stream yet. */
    this.epoch = null;
    this.offset = 0;
    this.seen = new Set();
    /** The offset last acknowledged to the gateway. */
    this.acked = 0;
  }

  /** The recovery query parameters for the next socket. */
  params() {
    if (this.epoch === null) return { recover: "true" };
    return { recover: "true", epoch: this.epoch, offset: String(this.offset) };
  }

  /** Whether a stream frame is new (deliver it) or a duplicate (drop it). */
  accept(epoch, offset) {
    if (this.epoch !== epoch) {
      // Another epoch: the stream was started again, which the recovery result says.
      if (this.epoch) return false;
      this.epoch = epoch;
      this.offset = 0;
      this.seen = new Set();
    }
    if (offset <= this.offset || this.seen.has(offset)) return false;
    this.seen.add(offset);
    while (this.seen.has(this.offset + 1)) {
      this.offset += 1;
      this.seen.delete(this.offset);
    }
    if (this.seen.size > StreamPosition.MAX_SEEN) {
      this.offset = Math.min(...this.seen);
      this.seen = new Set([...this.seen].filter((o) => o > this.offset));
    }
    return true;
  }

  /** After a recovery frame: its position becomes the client's (a stream not recovered starts
   * over there, and the app refetches its state). In the same epoch the client keeps what it
   * has seen (the gateway could not read the stream, or skipped past messages it lost): a later
   * replay of an offset already delivered must not deliver it again. */
  recovered(epoch, offset, recovered) {
    if (this.epoch === epoch) {
      this.offset = Math.max(this.offset, offset);
      this.seen = new Set([...this.seen].filter((o) => o > this.offset));
    } else if (!recovered || offset > this.offset) {
      this.epoch = epoch;
      this.offset = offset;
      this.seen = recovered ? new Set([...this.seen].filter((o) => o > offset)) : new Set();
    }
  }

  /** The `stream_ack` frame to send, or null when nothing new was processed. */
  ackFrame() {
    if (this.epoch === null || this.offset === this.acked) return null;
    this.acked = this.offset;
    return JSON.stringify({ type: "stream_ack", epoch: this.epoch, offset: this.offset });
  }
}

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

function noop() {}

/** A member entry of a presence frame, `{user_id, devices, info}`, or null when malformed. */
function presenceMember(entry) {
  if (entry === null || typeof entry !== "object" || typeof entry.user_id !== "string") return null;
  const info = entry.info !== null && typeof entry.info === "object" ? entry.info : {};
  return { user_id: entry.user_id, devices: Number.isInteger(entry.devices) ? entry.devices : 1, info };
}

function defaultReportError(error) {
  // Out of band, like an exception in a DOM event listener: the console (or Node's
  // uncaughtException) sees it, the client carries on.
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else
    queueMicrotask(() => {
      throw error;
    });
}

function rejected(error) {
  const promise = Promise.reject(error);
  // The caller may ignore the promise (fire and forget): the events say what happened, and an
  // unhandled rejection would otherwise crash Node or log an error in the browser.
  promise.catch(noop);
  return promise;
}

export class PresenceClient {
  #url;
  #userId;
  #getToken;
  #WebSocket;
  #bufferSize;
  #backoff;
  #random;
  #setTimeout;
  #clearTimeout;
  #now;
  #reconnect;
  #tokenRefreshLead;
  #tokenRetryDelay;
  #rateLimit;
  #maxMessageBytes;
  #connectTimeout;
  #reportError;

  #state = State.IDLE;
  #answerPings = true;
  #ws = null;
  #gen = 0; // bumped whenever a socket or a pending async step is abandoned
  #attempt = 0;
  #authRetried = false; // a 4401 was answered with one forced token refresh
  #forceNext = false;
  #openedAt = null;
  #gotPing = false;
  #token = null;
  #tokenExp = null;
  #pendingAuth = null;

  #timers = { reconnect: null, refresh: null, pump: null, connect: null, ack: null };
  #recover = false;
  #ackInterval = 500;
  /** The durable stream's position (with `recover: true`): presented on every connect. */
  streamPosition = new StreamPosition();

  #listeners = new Map();
  #handlers = new Map();

  #queue = []; // messages waiting to go out, oldest first
  #control = []; // join/leave frames for the current socket, sent before messages
  #rooms = new Set(); // rooms to be in: joined again on every new socket
  #roomInfo = new Map(); // room -> the `info` its join carries, sent again on every rejoin
  #members = new Map(); // presence room -> Map(user_id -> member), from its snapshot and diffs
  #joinWaiters = new Map(); // room -> [{resolve, reject}] until `joined` or a refusal
  #leaveWaiters = new Map(); // room -> [resolve] until `left`
  #inflight = new Map(); // id -> entry, sent on the current socket, not yet acknowledged
  #nextId = 1;
  #tokens = 0;
  #tokensAt = 0;

  constructor(options = {}) {
    const {
      url,
      userId,
      getToken = null,
      WebSocket = globalThis.WebSocket,
      bufferSize = DEFAULTS.bufferSize,
      backoff = {},
      random = Math.random,
      setTimeout: setTimer = (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: clearTimer = (id) => globalThis.clearTimeout(id),
      now = () => Date.now(),
      reconnect = true,
      answerPings = true,
      tokenRefreshLead = DEFAULTS.tokenRefreshLead,
      tokenRetryDelay = DEFAULTS.tokenRetryDelay,
      rateLimit = DEFAULTS.rateLimit,
      maxMessageBytes = DEFAULTS.maxMessageBytes,
      connectTimeout = DEFAULTS.connectTimeout,
      reportError = defaultReportError,
      recover = false,
      ackInterval = 500,
    } = options;
    if (!url) throw new TypeError("PresenceClient: `url` is required");
    if (userId === undefined || userId === null || userId === "") {
      throw new TypeError("PresenceClient: `userId` is required");
    }
    if (typeof WebSocket !== "function") {
      throw new TypeError(
        "PresenceClient: no WebSocket constructor: pass `WebSocket` (e.g. from the `ws` package)",
      );
    }
    if (getToken !== null && typeof getToken !== "function") {
      throw new TypeError("PresenceClient: `getToken` must be a function");
    }
    if (!(Number.isInteger(bufferSize) && bufferSize >= 0)) {
      throw new TypeError("PresenceClient: `bufferSize` must be an integer >= 0");
    }
    this.#url = url;
    this.#userId = String(userId);
    this.#getToken = getToken;
    this.#WebSocket = WebSocket;
    this.#bufferSize = bufferSize;
    this.#backoff = { ...DEFAULTS.backoff, ...backoff };
    this.#random = random;
    this.#setTimeout = setTimer;
    this.#clearTimeout = clearTimer;
    this.#now = now;
    this.#reconnect = reconnect;
    this.#answerPings = Boolean(answerPings);
    this.#tokenRefreshLead = tokenRefreshLead;
    this.#tokenRetryDelay = tokenRetryDelay;
    this.#rateLimit = rateLimit ? { ...DEFAULTS.rateLimit, ...rateLimit } : null;
    this.#maxMessageBytes = maxMessageBytes;
    this.#connectTimeout = connectTimeout;
    this.#reportError = reportError;
    this.#recover = Boolean(recover);
    this.#ackInterval = ackInterval;
    this.#tokens = this.#rateLimit ? this.#rateLimit.burst : 0;
    this.#tokensAt = now();
  }

  // --- public surface ------------------------------------------------------------------------

  get state() {
    return this.#state;
  }

  get userId() {
    return this.#userId;
  }

  /** Messages waiting to be sent (offline, or paced by the rate limit). */
  get buffered() {
    return this.#queue.length;
  }

  /** Messages sent on the current socket whose ack has not arrived. */
  get unacked() {
    return this.#inflight.size;
  }

  /** Testing aid: false stops answering the gateway's pings, so the session times out. */
  get answerPings() {
    return this.#answerPings;
  }

  set answerPings(value) {
    this.#answerPings = Boolean(value);
  }

  /** Subscribe to an event; returns a function that unsubscribes. */
  on(event, fn) {
    return this.#subscribe(this.#listeners, event, fn);
  }

  /** Subscribe to server frames of one `type` (`"notification"`, `"ping"`, …). */
  onMessage(type, fn) {
    return this.#subscribe(this.#handlers, type, fn);
  }

  /** Open the connection (from `idle`, or again after a terminal state); no-op while active. */
  connect() {
    if (
      this.#state === State.CONNECTING ||
      this.#state === State.CONNECTED ||
      this.#state === State.RECONNECTING
    ) {
      return;
    }
    this.#abandonSocket(1000, "reconnecting");
    this.#attempt = 0;
    this.#authRetried = false;
    this.#forceNext = false;
    this.#open();
  }

  /** Close for good: no reconnect; buffered and unacknowledged sends are rejected (`closed`). */
  close(code = 1000, reason = "client closed") {
    if (this.#state === State.CLOSED) return;
    const hadSocket = this.#ws !== null;
    this.#abandonSocket(code, reason);
    this.#gen++;
    this.#clearTimers();
    this.#setState(State.CLOSED);
    this.#rejectAll("closed", "the client was closed");
    this.#settleRooms("closed", "the client was closed");
    if (hadSocket) {
      this.#emit("disconnected", { code, reason, willReconnect: false });
    }
  }

  /**
   * Send `data` as `{"type":"message","data":data,"id":N}`. Resolves with `{id, timestamp}` when
   * the gateway acknowledges it; never throws. While disconnected the message waits in the
   * buffer (`bufferSize`, oldest dropped first with an `overflow` event).
   */
  send(data) {
    const id = this.#nextId++;
    let frame;
    try {
      frame = JSON.stringify({ type: "message", data: data === undefined ? null : data, id });
    } catch (error) {
      return rejected(
        new PresenceSendError("invalid_data", `data is not JSON: ${error?.message ?? error}`, {
          id,
          data,
        }),
      );
    }
    // A UTF-16 unit encodes to at most 3 UTF-8 bytes: encode only when the size could matter.
    if (frame.length * 3 > this.#maxMessageBytes && utf8Length(frame) > this.#maxMessageBytes) {
      return rejected(
        new PresenceSendError(
          "message_too_large",
          `the frame exceeds ${this.#maxMessageBytes} bytes`,
          { id, data },
        ),
      );
    }
    if (TERMINAL.has(this.#state)) {
      return rejected(new PresenceSendError(this.#state, `the client is ${this.#state}`, { id, data }));
    }
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(noop);
    this.#queue.push({ id, data, frame, resolve, reject, promise });
    this.#pump();
    this.#trimQueue();
    return promise;
  }

  /** The rooms this client is in, or will join on its next socket, sorted. */
  get rooms() {
    return [...this.#rooms].sort();
  }

  /**
   * Join a room (`{"type":"join","room":room}`). Resolves with `{room, timestamp}` on the
   * gateway's `joined`; rejects with a `PresenceRoomError` when the gateway refuses
   * (`room_forbidden`, `invalid_room`, `too_many_rooms`, `room_full`) or the client stops.
   * While offline the join waits for the next socket. Membership belongs to a socket, so the
   * client joins its rooms again on every reconnect. `info` (a JSON object) is shown to the
   * other members of a presence room (docs/presence.md); every rejoin carries it again. In a
   * presence room the gateway then sends the `presence` snapshot, and `presenceDiff`s after it.
   */
  join(room, { info } = {}) {
    room = String(room);
    if (TERMINAL.has(this.#state)) {
      return rejected(new PresenceRoomError(this.#state, `the client is ${this.#state}`, room));
    }
    if (info !== undefined && (info === null || typeof info !== "object" || Array.isArray(info))) {
      return rejected(new PresenceRoomError("invalid_info", "`info` must be a JSON object", room));
    }
    let frame;
    try {
      frame = this.#joinFrame(room, info);
    } catch (error) {
      return rejected(
        new PresenceRoomError("invalid_info", `info is not JSON: ${error?.message ?? error}`, room),
      );
    }
    const promise = new Promise((resolve, reject) => {
      const waiters = this.#joinWaiters.get(room) ?? [];
      waiters.push({ resolve, reject });
      this.#joinWaiters.set(room, waiters);
    });
    promise.catch(noop);
    this.#rooms.add(room);
    if (info === undefined) this.#roomInfo.delete(room);
    else this.#roomInfo.set(room, info);
    if (this.#state === State.CONNECTED) this.#control.push(frame);
    this.#pump();
    return promise;
  }

  #joinFrame(room, info = this.#roomInfo.get(room)) {
    return info === undefined
      ? JSON.stringify({ type: "join", room })
      : JSON.stringify({ type: "join", room, info });
  }

  /** Leave a room. Resolves with `{room}` on the gateway's `left`, at once when offline (the
   * membership died with the socket). Never rejects. */
  leave(room) {
    room = String(room);
    this.#rooms.delete(room);
    this.#roomInfo.delete(room);
    this.#dropMembers(room);
    if (this.#state !== State.CONNECTED) return Promise.resolve({ room });
    const promise = new Promise((resolve) => {
      const waiters = this.#leaveWaiters.get(room) ?? [];
      waiters.push(resolve);
      this.#leaveWaiters.set(room, waiters);
    });
    this.#control.push(JSON.stringify({ type: "leave", room }));
    this.#pump();
    return promise;
  }

  /**
   * The members of a presence room as this client last heard (`{user_id, devices, info}`, in
   * the order they arrived): the snapshot after each join, then its diffs. Empty for a room
   * with no snapshot yet, after leaving it, and while disconnected.
   */
  members(room) {
    return [...(this.#members.get(String(room))?.values() ?? [])].map((m) => ({ ...m }));
  }

  /**
   * Relay `data` (any JSON value) to the room's other sockets:
   * `{"type":"publish","room":room,"data":data}`. Signals are ephemeral: nothing is buffered
   * while offline and nothing is acknowledged. Returns true when the frame is on its way on
   * the live socket (paced with the other frames), false when offline or not in the room.
   * Throws a `PresenceSendError` (`invalid_data`, `message_too_large`) for data that cannot go.
   */
  publish(room, data) {
    room = String(room);
    let frame;
    try {
      frame = JSON.stringify({ type: "publish", room, data: data === undefined ? null : data });
    } catch (error) {
      throw new PresenceSendError("invalid_data", `data is not JSON: ${error?.message ?? error}`, { data });
    }
    if (frame.length * 3 > this.#maxMessageBytes && utf8Length(frame) > this.#maxMessageBytes) {
      throw new PresenceSendError("message_too_large", `the frame exceeds ${this.#maxMessageBytes} bytes`, {
        data,
      });
    }
    if (this.#state !== State.CONNECTED || !this.#rooms.has(room)) return false;
    // The control queue: after the room's join, ahead of buffered messages, and dropped with
    // the socket, so a stale signal (typing) is never replayed on the next one.
    this.#control.push(frame);
    this.#pump();
    return true;
  }

  /** Ask `getToken` now and send the token if it changed (e.g. from Firebase's `onIdTokenChanged`). */
  async refreshToken() {
    await this.#refresh({ forced: false, onlyIfChanged: true });
  }

  // --- connection ----------------------------------------------------------------------------

  async #open() {
    const gen = ++this.#gen;
    this.#setState(State.CONNECTING);
    const forceRefresh = this.#forceNext;
    this.#forceNext = false;
    this.#emit("connecting", { attempt: this.#attempt, forceRefresh });
    let token = null;
    if (this.#getToken) {
      try {
        token = await this.#getToken({ forceRefresh });
      } catch (error) {
        if (gen !== this.#gen) return;
        this.#tokenUnavailable(error);
        if (forceRefresh) {
          // The gateway refused our token and no fresh one can be had: signing in again is
          // the only way out.
          this.#stopWithAuthError(CloseCode.UNAUTHENTICATED, "token refresh failed", null);
        } else {
          this.#retryLater(this.#nextBackoff());
        }
        return;
      }
      if (gen !== this.#gen) return;
    }
    let ws;
    try {
      const params = this.#recover ? this.streamPosition.params() : null;
      ws = new this.#WebSocket(socketUrl(this.#url, this.#userId, token, params));
    } catch (error) {
      this.#emit("error", {
        source: "socket",
        code: "socket_failed",
        message: String(error?.message ?? error),
        error,
      });
      this.#retryLater(this.#nextBackoff());
      return;
    }
    this.#ws = ws;
    this.#token = token;
    this.#tokenExp = tokenExpiry(token);
    this.#pendingAuth = null;
    this.#openedAt = null;
    this.#gotPing = false;
    ws.onopen = () => {
      if (gen === this.#gen) this.#onOpen();
    };
    ws.onmessage = (event) => {
      if (gen === this.#gen) this.#onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (gen === this.#gen) this.#onClose(event.code, event.reason ?? "");
    };
    ws.onerror = noop; // a close event follows; it carries what there is to know
    if (this.#connectTimeout > 0) {
      this.#timers.connect = this.#setTimeout(() => {
        this.#timers.connect = null;
        if (gen !== this.#gen || ws.readyState !== CONNECTING_READY_STATE) return;
        this.#abandonSocket(1000, "connect timeout");
        this.#onClose(CloseCode.ABNORMAL, "connect timeout");
      }, this.#connectTimeout);
    }
  }

  #onOpen() {
    this.#cancel("connect");
    this.#openedAt = this.#now();
    this.#setState(State.CONNECTED);
    this.#emit("connected", { attempt: this.#attempt });
    this.#scheduleRefresh();
    // A new socket is in no room: join them all again, ahead of any buffered message.
    this.#control = this.rooms.map((room) => this.#joinFrame(room));
    this.#pump();
  }

  #onFrame(raw) {
    if (typeof raw !== "string") {
      this.#emit("error", { source: "protocol", code: "binary_frame", message: "binary frame ignored" });
      return;
    }
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      frame = null;
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      this.#emit("error", { source: "protocol", code: "invalid_frame", message: "not a JSON object" });
      return;
    }
    switch (frame.type) {
      case ServerFrameType.PING:
        this.#onPing(frame);
        break;
      case ServerFrameType.ACK:
        this.#onAck(frame);
        break;
      case ServerFrameType.AUTH_OK:
        this.#onAuthOk(frame);
        break;
      case ServerFrameType.ERROR:
        this.#onServerError(frame);
        break;
      case ServerFrameType.TIMEOUT:
        this.#signOut(frame.message);
        break;
      case ServerFrameType.SIGNED_OUT:
        this.#signOut(frame.message, null, SIGNED_OUT_BY_SERVICE_REASON, CloseCode.SIGNED_OUT);
        break;
      case ServerFrameType.JOINED:
        this.#onJoined(frame);
        break;
      case ServerFrameType.LEFT:
        this.#onLeft(frame);
        break;
      case ServerFrameType.STREAM:
        if (!this.#onStream(frame)) return; // a duplicate: nobody hears of it again
        break;
      case ServerFrameType.RECOVERY:
        this.#onRecovery(frame);
        break;
      case ServerFrameType.PRESENCE:
        this.#onPresence(frame);
        break;
      case ServerFrameType.PRESENCE_DIFF:
        this.#onPresenceDiff(frame);
        break;
      case ServerFrameType.PUBLISH:
        this.#onPublish(frame);
        break;
      default:
        break;
    }
    this.#emit("message", frame);
    if (typeof frame.type === "string") {
      for (const fn of [...(this.#handlers.get(frame.type) ?? [])]) this.#call(fn, frame);
    }
  }

  #onStream(frame) {
    const { epoch, offset, data } = frame;
    if (typeof epoch !== "string" || !Number.isInteger(offset)) {
      this.#emit("error", { source: "protocol", code: "invalid_frame", message: "stream frame" });
      return false;
    }
    if (!this.streamPosition.accept(epoch, offset)) return false;
    this.#emit("stream", { epoch, offset, data });
    if (data !== null && typeof data === "object" && typeof data.type === "string") {
      // The backend's message reaches onMessage(type) as if it had been sent plainly.
      for (const fn of [...(this.#handlers.get(data.type) ?? [])]) this.#call(fn, data);
    }
    this.#scheduleAck();
    return true;
  }

  #onRecovery(frame) {
    const { epoch, offset } = frame;
    if (typeof epoch !== "string" || !Number.isInteger(offset)) return;
    const recovered = frame.recovered === true;
    this.streamPosition.recovered(epoch, offset, recovered);
    const event = {
      recovered,
      epoch,
      offset,
      missed: Number.isInteger(frame.missed) ? frame.missed : 0,
      reason: typeof frame.reason === "string" ? frame.reason : null,
    };
    this.#emit("recovery", event);
    if (!recovered) this.#emit("notRecovered", event);
  }

  #scheduleAck() {
    // One stream_ack per ackInterval at most: a replay of 300 messages must not cost 300
    // frames against the gateway's per-socket rate limit.
    if (this.#timers.ack !== null) return;
    this.#timers.ack = this.#setTimeout(() => {
      this.#timers.ack = null;
      const frame = this.streamPosition.ackFrame();
      // Not sent (the socket went away): the next message acknowledges again.
      if (frame !== null && !this.#sendFrame(frame)) this.streamPosition.acked = 0;
    }, this.#ackInterval);
  }

  #onPing(frame) {
    if (this.#state !== State.CONNECTED) return;
    // Answer at once, inside the message event: no timer, so a hidden tab whose timers are
    // throttled still answers every ping and stays signed in.
    const answered = this.#answerPings && this.#sendFrame('{"type":"pong"}');
    // A ping proves the token was accepted and the connection works: start over on backoff.
    this.#gotPing = true;
    this.#attempt = 0;
    this.#authRetried = false;
    this.#emit("ping", frame);
    if (answered) this.#emit("pong", { time: this.#now(), ping: frame });
  }

  #onAck(frame) {
    const entry = this.#inflight.get(frame.id);
    if (!entry) return;
    this.#inflight.delete(frame.id);
    entry.resolve({ id: frame.id, timestamp: frame.timestamp });
  }

  #onJoined(frame) {
    const room = String(frame.room);
    const waiters = this.#joinWaiters.get(room) ?? [];
    this.#joinWaiters.delete(room);
    for (const { resolve } of waiters) resolve({ room, timestamp: frame.timestamp });
    this.#emit("joined", { room, timestamp: frame.timestamp });
  }

  #onLeft(frame) {
    const room = String(frame.room);
    const reason = frame.reason ?? "leave";
    if (reason !== "leave") {
      this.#rooms.delete(room); // e.g. not_allowed: the token lost it
      this.#roomInfo.delete(room);
    }
    this.#dropMembers(room);
    const waiters = this.#leaveWaiters.get(room) ?? [];
    this.#leaveWaiters.delete(room);
    for (const resolve of waiters) resolve({ room });
    this.#emit("left", { room, reason });
  }

  #onRoomRefused(frame) {
    const room = String(frame.room);
    // A refusal is final for this token: do not ask again on the next socket.
    this.#rooms.delete(room);
    this.#roomInfo.delete(room);
    const waiters = this.#joinWaiters.get(room) ?? [];
    this.#joinWaiters.delete(room);
    for (const { reject } of waiters) {
      reject(new PresenceRoomError(frame.code, frame.message ?? frame.code, room));
    }
  }

  /** The socket is gone: leaves are done; joins wait for the next socket, or fail if none. */
  #settleRooms(stopCode = null, why = "") {
    this.#control = [];
    // Presence belongs to the socket too: the snapshot after the next join rebuilds it.
    for (const room of [...this.#members.keys()]) this.#dropMembers(room);
    for (const [room, waiters] of this.#leaveWaiters) for (const resolve of waiters) resolve({ room });
    this.#leaveWaiters.clear();
    if (stopCode === null) return;
    for (const [room, waiters] of this.#joinWaiters) {
      for (const { reject } of waiters) reject(new PresenceRoomError(stopCode, `not joined: ${why}`, room));
    }
    this.#joinWaiters.clear();
  }

  /** A presence room's snapshot (after each join): it replaces the room's member list. */
  #onPresence(frame) {
    if (typeof frame.room !== "string" || !Array.isArray(frame.members)) {
      this.#emit("error", { source: "protocol", code: "invalid_frame", message: "presence frame" });
      return;
    }
    const room = frame.room;
    const members = new Map();
    for (const entry of frame.members) {
      const member = presenceMember(entry);
      if (member) members.set(member.user_id, member);
    }
    // A snapshot for a room left meanwhile (the leave crossed it) would resurrect its list.
    if (this.#rooms.has(room)) this.#members.set(room, members);
    this.#emit("presence", {
      room,
      members: [...members.values()].map((m) => ({ ...m })),
      users: frame.users,
      connections: frame.connections,
      timestamp: frame.timestamp,
    });
    if (this.#rooms.has(room)) this.#emitPresenceChange(room);
  }

  /** A batch of joins (upserts by user) and leaves after the snapshot. */
  #onPresenceDiff(frame) {
    if (typeof frame.room !== "string") {
      this.#emit("error", { source: "protocol", code: "invalid_frame", message: "presence_diff frame" });
      return;
    }
    const room = frame.room;
    const joins = (Array.isArray(frame.joins) ? frame.joins : []).map(presenceMember).filter(Boolean);
    const leaves = (Array.isArray(frame.leaves) ? frame.leaves : [])
      .map((entry) => (typeof entry?.user_id === "string" ? entry.user_id : null))
      .filter((id) => id !== null);
    const members = this.#members.get(room);
    if (members) {
      for (const userId of leaves) members.delete(userId);
      for (const member of joins) members.set(member.user_id, member);
    }
    this.#emit("presenceDiff", {
      room,
      joins: joins.map((m) => ({ ...m })),
      leaves: leaves.map((user_id) => ({ user_id })),
      users: frame.users,
      connections: frame.connections,
      timestamp: frame.timestamp,
    });
    // A diff with no snapshot before it (a room left, a socket gone) changes no list.
    if (members) this.#emitPresenceChange(room);
  }

  #onPublish(frame) {
    if (typeof frame.room !== "string") return;
    this.#emit("publish", {
      room: frame.room,
      from: frame.from,
      data: frame.data,
      timestamp: frame.timestamp,
    });
  }

  #dropMembers(room) {
    if (!this.#members.delete(room)) return;
    this.#emitPresenceChange(room);
  }

  #emitPresenceChange(room) {
    this.#emit("presenceChange", { room, members: this.members(room) });
  }

  #onAuthOk(frame) {
    const pending = this.#pendingAuth;
    this.#pendingAuth = null;
    if (pending) {
      this.#token = pending.token;
      this.#tokenExp = tokenExpiry(pending.token);
    }
    if (this.#tokenExp === null && typeof frame.expires_at === "string") {
      const parsed = Date.parse(frame.expires_at);
      if (Number.isFinite(parsed)) this.#tokenExp = parsed;
    }
    this.#scheduleRefresh();
    this.#emit("tokenRefreshed", { expiresAt: frame.expires_at });
  }

  #onServerError(frame) {
    this.#emit("error", {
      source: "server",
      code: frame.code,
      message: frame.message,
      frame,
    });
    if (typeof frame.room === "string" && JOIN_REFUSALS.has(frame.code)) {
      this.#onRoomRefused(frame);
    }
    if (frame.code === "invalid_token" && this.#pendingAuth) {
      const { forced } = this.#pendingAuth;
      this.#pendingAuth = null;
      if (!forced) {
        this.#refresh({ forced: true });
      } else {
        // Even a forced token was refused: no tight loop. Try again later; meanwhile the
        // socket stays until the gateway closes it (4401 after TOKEN_GRACE), which takes the
        // reconnect path with one more forced refresh.
        this.#scheduleRetryRefresh();
      }
    }
  }

  #onClose(code, reason) {
    this.#cancel("connect");
    this.#cancel("refresh");
    this.#cancel("pump");
    const opened = this.#openedAt !== null;
    const stable =
      this.#gotPing || (opened && this.#now() - this.#openedAt >= this.#backoff.resetAfter);
    this.#ws = null;
    this.#gen++;
    this.#pendingAuth = null;
    this.#settleRooms();
    if (stable) {
      this.#attempt = 0;
      this.#authRetried = false;
    }
    const info = { code, reason };

    if (this.#state === State.SIGNED_OUT) {
      this.#emit("disconnected", { ...info, willReconnect: false });
      return;
    }
    switch (code) {
      case CloseCode.SESSION_EXPIRED:
        this.#signOut(undefined, info);
        this.#emit("disconnected", { ...info, willReconnect: false });
        return;
      case CloseCode.SIGNED_OUT:
        this.#signOut(undefined, info, SIGNED_OUT_BY_SERVICE_REASON, CloseCode.SIGNED_OUT);
        this.#emit("disconnected", { ...info, willReconnect: false });
        return;
      case CloseCode.FORBIDDEN:
        this.#stopWithAuthError(code, reason, info);
        return;
      case CloseCode.INVALID_USER_ID:
        this.#stop(State.CLOSED, "closed", `the gateway refused the user id: ${reason}`);
        this.#emit("error", { source: "server", code: "invalid_user_id", message: reason });
        this.#emit("disconnected", { ...info, willReconnect: false });
        return;
      case CloseCode.UNAUTHENTICATED:
        if (this.#authRetried) {
          this.#stopWithAuthError(code, reason, info);
          return;
        }
        break;
      default:
        break;
    }

    this.#settleInflight(code);
    if (!this.#reconnect) {
      this.#stop(State.CLOSED, "closed", "the connection closed and reconnect is off");
      this.#emit("disconnected", { ...info, willReconnect: false });
      return;
    }
    let delay;
    if (code === CloseCode.UNAUTHENTICATED) {
      this.#authRetried = true;
      this.#forceNext = true;
      delay = 0;
    } else if (code === CloseCode.RATE_LIMITED) {
      delay = this.#backoff.rateLimited + this.#nextBackoff();
    } else if (code === CloseCode.SERVICE_RESTART) {
      // A draining instance closes all its sockets at once: spread their return.
      delay = this.#random() * this.#backoff.restartJitter;
    } else {
      delay = this.#nextBackoff();
    }
    this.#retryLater(delay, info);
  }

  #nextBackoff() {
    const delay = backoffDelay(this.#attempt, this.#backoff, this.#random);
    this.#attempt++;
    return delay;
  }

  #retryLater(delay, info = null) {
    this.#setState(State.RECONNECTING);
    this.#timers.reconnect = this.#setTimeout(() => {
      this.#timers.reconnect = null;
      this.#open();
    }, delay);
    if (info) this.#emit("disconnected", { ...info, willReconnect: true, delay });
  }

  #signOut(
    message,
    closeInfo = null,
    reason = SIGNED_OUT_REASON,
    code = CloseCode.SESSION_EXPIRED,
  ) {
    if (this.#state === State.SIGNED_OUT) return;
    this.#stop(State.SIGNED_OUT, "signed_out", reason);
    this.#emit("signedOut", {
      reason,
      message: message ?? null,
      code,
      ...(closeInfo ? { closeReason: closeInfo.reason } : {}),
    });
  }

  #stopWithAuthError(code, reason, info) {
    this.#stop(State.AUTH_ERROR, "auth_error", `authentication failed: ${reason}`);
    this.#emit("authError", { code, reason });
    if (info) this.#emit("disconnected", { ...info, willReconnect: false });
  }

  #stop(state, rejectCode, why) {
    this.#clearTimers();
    this.#setState(state);
    this.#rejectAll(rejectCode, why);
    this.#settleRooms(rejectCode, why);
  }

  #abandonSocket(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    this.#ws = null;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = noop; // the `ws` package throws on an 'error' event nobody listens to
    try {
      ws.close(code, reason);
    } catch {
      // already closed, or a code the implementation refuses: nothing left to do
    }
  }

  // --- tokens --------------------------------------------------------------------------------

  #scheduleRefresh() {
    this.#cancel("refresh");
    if (!this.#getToken || this.#tokenExp === null || this.#state !== State.CONNECTED) return;
    const delay = refreshDelay(this.#tokenExp, this.#now(), this.#tokenRefreshLead);
    this.#timers.refresh = this.#setTimeout(() => {
      this.#timers.refresh = null;
      this.#refresh({ forced: false });
    }, delay);
  }

  #scheduleRetryRefresh() {
    this.#cancel("refresh");
    if (this.#state !== State.CONNECTED) return;
    this.#timers.refresh = this.#setTimeout(() => {
      this.#timers.refresh = null;
      this.#refresh({ forced: false });
    }, this.#tokenRetryDelay);
  }

  async #refresh({ forced, onlyIfChanged = false }) {
    if (!this.#getToken || this.#state !== State.CONNECTED) return;
    const gen = this.#gen;
    let token;
    try {
      token = await this.#getToken({ forceRefresh: forced });
      if (gen !== this.#gen) return;
      const exp = tokenExpiry(token);
      const stale =
        token === this.#token ||
        (exp !== null && this.#tokenExp !== null && exp <= this.#tokenExp);
      if (stale && onlyIfChanged) return;
      if (stale && !forced) {
        // Firebase hands out its cached token until shortly before expiry: ask for a new one.
        forced = true;
        token = await this.#getToken({ forceRefresh: true });
        if (gen !== this.#gen) return;
      }
    } catch (error) {
      if (gen !== this.#gen) return;
      this.#tokenUnavailable(error);
      this.#scheduleRetryRefresh();
      return;
    }
    if (this.#state !== State.CONNECTED) return;
    this.#pendingAuth = { token, forced };
    this.#sendFrame(JSON.stringify({ type: "auth", token }));
  }

  /** `getToken()` threw: the app hears it as an `error` event; the caller decides what next. */
  #tokenUnavailable(error) {
    this.#emit("error", {
      source: "getToken",
      code: "token_unavailable",
      message: String(error?.message ?? error),
      error,
    });
  }

  // --- outgoing messages ---------------------------------------------------------------------

  #sendFrame(text) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(text);
      return true;
    } catch {
      return false;
    }
  }

  #takeToken() {
    const limit = this.#rateLimit;
    if (!limit) return true;
    const now = this.#now();
    this.#tokens = Math.min(limit.burst, this.#tokens + ((now - this.#tokensAt) / 1000) * limit.perSecond);
    this.#tokensAt = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  #pump() {
    if (this.#state !== State.CONNECTED || this.#timers.pump !== null) return;
    while (this.#control.length > 0 || this.#queue.length > 0) {
      const ws = this.#ws;
      if (!ws || ws.readyState !== OPEN) return;
      if (!this.#takeToken()) {
        // Stay under the gateway's per-socket limit (WS_MAX_MESSAGES_PER_SECOND, 4429 beyond).
        const wait = ((1 - this.#tokens) / this.#rateLimit.perSecond) * 1000;
        this.#timers.pump = this.#setTimeout(() => {
          this.#timers.pump = null;
          this.#pump();
        }, Math.ceil(wait));
        return;
      }
      if (this.#control.length > 0) {
        // Joins and leaves count against the same per-socket rate limit as messages.
        try {
          ws.send(this.#control[0]);
        } catch {
          this.#tokens += 1;
          return;
        }
        this.#control.shift();
        continue;
      }
      const entry = this.#queue[0];
      try {
        ws.send(entry.frame);
      } catch {
        this.#tokens += 1;
        return; // the socket is closing; its close event decides what happens next
      }
      this.#queue.shift();
      this.#inflight.set(entry.id, entry);
    }
  }

  #trimQueue() {
    while (this.#queue.length > this.#bufferSize) {
      const dropped = this.#queue.shift();
      dropped.reject(
        new PresenceSendError("overflow", "dropped: the offline buffer is full", {
          id: dropped.id,
          data: dropped.data,
        }),
      );
      this.#emit("overflow", { id: dropped.id, data: dropped.data });
    }
  }

  #settleInflight(code) {
    if (this.#inflight.size === 0) return;
    const entries = [...this.#inflight.values()].sort((a, b) => a.id - b.id);
    this.#inflight.clear();
    if (RESEND_AFTER.has(code)) {
      this.#queue.unshift(...entries);
      this.#trimQueue();
      return;
    }
    for (const entry of entries) {
      entry.reject(
        new PresenceSendError(
          "disconnected",
          `the connection closed (${code}) before the gateway acknowledged the message`,
          { id: entry.id, data: entry.data, maybeDelivered: true },
        ),
      );
    }
  }

  #rejectAll(code, why) {
    const entries = [...this.#inflight.values(), ...this.#queue].sort((a, b) => a.id - b.id);
    this.#inflight.clear();
    this.#queue = [];
    for (const entry of entries) {
      entry.reject(
        new PresenceSendError(code, `not sent: ${why}`, {
          id: entry.id,
          data: entry.data,
          maybeDelivered: false,
        }),
      );
    }
  }

  // --- plumbing ------------------------------------------------------------------------------

  #setState(state) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.#emit("state", { state, previous });
  }

  #cancel(name) {
    const id = this.#timers[name];
    this.#timers[name] = null;
    if (id !== null && id !== undefined) this.#clearTimeout(id);
  }

  #clearTimers() {
    for (const name of Object.keys(this.#timers)) this.#cancel(name);
  }

  #subscribe(map, key, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    let set = map.get(key);
    if (!set) map.set(key, (set = new Set()));
    set.add(fn);
    return () => {
      set.delete(fn);
    };
  }

  #emit(event, payload) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) this.#call(fn, payload);
  }

  #call(fn, payload) {
    try {
      fn(payload);
    } catch (error) {
      // A listener's bug must not break the connection's bookkeeping; report it out of band.
      this.#reportError(error);
    }
  }
}

export default PresenceClient;
