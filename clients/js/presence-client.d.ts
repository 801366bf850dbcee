// Type declarations for presence-client.js (@presence/client).

export declare const VERSION: string;

/** The gateway's close codes (gateway/protocol/protocol.json), then the three a WebSocket
 * reports on its own (1001, 1005, 1006). */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  NO_STATUS: 1005;
  ABNORMAL: 1006;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  SERVICE_RESTART: 1012;
  INVALID_USER_ID: 4400;
  UNAUTHENTICATED: 4401;
  FORBIDDEN: 4403;
  /** @deprecated 4403's older name: use `FORBIDDEN`. */
  WRONG_USER: 4403;
  SESSION_EXPIRED: 4408;
  SIGNED_OUT: 4410;
  RATE_LIMITED: 4429;
}>;

/** The `type` of every frame the gateway sends (a backend's own messages have theirs). */
export declare const ServerFrameType: Readonly<{
  PING: "ping";
  PONG: "pong";
  ACK: "ack";
  AUTH_OK: "auth_ok";
  TIMEOUT: "timeout";
  SIGNED_OUT: "signed_out";
  ERROR: "error";
  JOINED: "joined";
  LEFT: "left";
  STREAM: "stream";
  RECOVERY: "recovery";
  PRESENCE: "presence";
  PRESENCE_DIFF: "presence_diff";
  PUBLISH: "publish";
}>;
export type ServerFrameType = (typeof ServerFrameType)[keyof typeof ServerFrameType];

/** The `type` of every frame the gateway accepts; any other is logged and ignored. */
export type ClientFrameType =
  | "pong"
  | "ping"
  | "message"
  | "auth"
  | "join"
  | "leave"
  | "stream_ack"
  | "publish";

/** The `code` of the gateway's `{"type": "error"}` frames (docs/protocol.md, Errors). */
export type ServerErrorCode =
  | "invalid_json"
  | "not_an_object"
  | "missing_type"
  | "invalid_type"
  | "invalid_field"
  | "invalid_token"
  | "token_expired"
  | "invalid_room"
  | "room_forbidden"
  | "too_many_rooms"
  | "room_full"
  | "invalid_info"
  | "not_in_room"
  | "publish_forbidden"
  | "binary_frame";

export type PresenceState =
  | "idle"
  | "connecting"
  | "connected"
  | "reconnecting"
  | "signed_out"
  | "auth_error"
  | "closed";

export declare const State: Readonly<{
  IDLE: "idle";
  CONNECTING: "connecting";
  CONNECTED: "connected";
  RECONNECTING: "reconnecting";
  SIGNED_OUT: "signed_out";
  AUTH_ERROR: "auth_error";
  CLOSED: "closed";
}>;

export declare const SIGNED_OUT_REASON: "signed out for inactivity";
export declare const SIGNED_OUT_BY_SERVICE_REASON: "signed out by the service";

export interface BackoffOptions {
  /** First reconnect delay cap, ms (default 500). */
  min?: number;
  /** Largest delay cap, ms (default 20000). */
  max?: number;
  /** Floor added after a 4429 close, ms (default 5000). */
  rateLimited?: number;
  /** Reconnect within random() * this after a 1012 (drain/restart), ms (default 2000). */
  restartJitter?: number;
  /** A connection up this long (or that got a ping) resets the backoff, ms (default 10000). */
  resetAfter?: number;
}

export interface RateLimitOptions {
  /** Sustained frames per second for messages (default 10; the gateway closes at 20 with 4429). */
  perSecond?: number;
  /** Burst size (default 20; the gateway allows 40). */
  burst?: number;
}

/** The part of the WebSocket interface the client uses (browsers, `ws`, Node 22's global). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface PresenceClientOptions {
  /** The gateway's base URL: `ws://host:8000`, `wss://…` (`http(s)://` is turned into `ws(s)://`). */
  url: string;
  /** The user id in the socket path; with Firebase Auth, `auth.currentUser.uid`. */
  userId: string;
  /**
   * A Firebase ID token for this user, asked on every connect and before the token expires.
   * `forceRefresh` is true after a 4401 and when the cached token would not outlive the old one.
   * Omit (or return null) for a gateway with `AUTH_MODE=off`.
   */
  getToken?: (options: { forceRefresh: boolean }) => string | null | Promise<string | null>;
  /** Defaults to `globalThis.WebSocket` (browsers, Node 22); on Node 20 pass `ws`'s WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Messages kept while offline (default 100); the oldest is dropped beyond. */
  bufferSize?: number;
  backoff?: BackoffOptions;
  /** Client-side pacing of `send()` frames; null turns it off. */
  rateLimit?: RateLimitOptions | null;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  /** Answer the gateway's pings (default true); a testing aid, see `answerPings`. */
  answerPings?: boolean;
  /** Refresh the token this long before it expires, ms (default 300000; halfway when shorter). */
  tokenRefreshLead?: number;
  /** Retry a failed token refresh after this long, ms (default 30000). */
  tokenRetryDelay?: number;
  /** `send()` rejects frames larger than this many UTF-8 bytes (default 65536, the gateway's). */
  maxMessageBytes?: number;
  /** Give up on a handshake that takes longer, ms (default 15000; 0: never). */
  connectTimeout?: number;
  /** Where a listener's exception goes (default: reportError, else rethrown in a microtask). */
  reportError?: (error: unknown) => void;
  /** Durable delivery (default false): present the stream position on every connect, drop
   * duplicate offsets, acknowledge processed messages; see docs/protocol.md. */
  recover?: boolean;
  /** At most one `stream_ack` per this many ms (default 500). */
  ackInterval?: number;
  /** Injected for tests. */
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  now?: () => number;
}

/** Any frame the gateway sends; `type` says which. */
export interface ServerFrame {
  type: string;
  [key: string]: unknown;
}

export interface PingFrame extends ServerFrame {
  type: "ping";
  timestamp?: string;
  message?: string;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  willReconnect: boolean;
  /** ms until the next attempt, when `willReconnect`. */
  delay?: number;
}

export interface SignedOutEvent {
  /** Inactivity (the timeout message, 4408) or the service (the signed_out message, 4410). */
  reason: "signed out for inactivity" | "signed out by the service";
  /** The gateway's text, or null when only the close arrived. */
  message: string | null;
  code: 4408 | 4410;
  closeReason?: string;
}

export interface ClientErrorEvent {
  source: "server" | "getToken" | "socket" | "protocol";
  code: string;
  message: string;
  error?: unknown;
  frame?: ServerFrame;
}

export interface PresenceEvents {
  state: { state: PresenceState; previous: PresenceState };
  connecting: { attempt: number; forceRefresh: boolean };
  connected: { attempt: number };
  disconnected: DisconnectedEvent;
  signedOut: SignedOutEvent;
  authError: { code: number; reason: string };
  message: ServerFrame;
  ping: PingFrame;
  pong: { time: number; ping: PingFrame };
  overflow: { id: number; data: unknown };
  tokenRefreshed: { expiresAt: string };
  error: ClientErrorEvent;
  /** The gateway confirmed a join (also each rejoin after a reconnect). */
  joined: { room: string; timestamp: string };
  /** The socket left a room: `leave` when asked, `not_allowed` when a refreshed token
   * no longer grants it. */
  left: { room: string; reason: "leave" | "not_allowed" | string };
  /** A durable message, once (duplicates by offset are dropped); acknowledged afterwards. */
  stream: StreamMessageEvent;
  /** The end of each recovery (`recover: true`). */
  recovery: RecoveryEvent;
  /** The recovery failed (window exceeded, epoch changed): refetch the application's state. */
  notRecovered: RecoveryEvent;
  /** A presence room's snapshot, after each join (docs/presence.md). */
  presence: PresenceSnapshotEvent;
  /** A batch of changes to a presence room's members after its snapshot. */
  presenceDiff: PresenceDiffEvent;
  /** A room's member list changed (snapshot, diff, leave, disconnect): render `members`. */
  presenceChange: { room: string; members: PresenceMember[] };
  /** A signal another member relayed to the room (`publish`). */
  publish: PublishEvent;
}

/** One user in a presence room: their sockets in it and the `info` their join carried. */
export interface PresenceMember {
  user_id: string;
  devices: number;
  info: Record<string, unknown>;
}

export interface PresenceSnapshotEvent {
  room: string;
  members: PresenceMember[];
  /** The room's occupancy across the deployment. */
  users: number;
  connections: number;
  timestamp: string;
}

export interface PresenceDiffEvent {
  room: string;
  /** Upserts: a member's entry replaces the one with the same `user_id`. */
  joins: PresenceMember[];
  /** Users whose last socket in the room is gone. */
  leaves: { user_id: string }[];
  /** The room's occupancy after the diff. */
  users: number;
  connections: number;
  timestamp: string;
}

export interface PublishEvent {
  room: string;
  /** The user who published. */
  from: string;
  data: unknown;
  timestamp: string;
}

export interface JoinOptions {
  /** Shown to the other members of a presence room; sent again on every rejoin. */
  info?: Record<string, unknown>;
}

export interface StreamMessageEvent {
  epoch: string;
  offset: number;
  data: unknown;
}

export interface RecoveryEvent {
  recovered: boolean;
  epoch: string;
  offset: number;
  /** Messages replayed before the result. */
  missed: number;
  /** `epoch_changed`, `window_exceeded`, `no_position` or `unavailable` when not recovered. */
  reason: string | null;
}

/** A client's place in its durable stream (what it presents on reconnect). */
export declare class StreamPosition {
  static MAX_SEEN: number;
  /** null until the gateway said where the stream stands; "" before any stream exists. */
  epoch: string | null;
  /** Every message up to this offset was processed. */
  offset: number;
  seen: Set<number>;
  acked: number;
  params(): Record<string, string>;
  accept(epoch: string, offset: number): boolean;
  recovered(epoch: string, offset: number, recovered: boolean): void;
  ackFrame(): string | null;
}

export interface Ack {
  id: number;
  timestamp: string;
}

export type SendErrorCode =
  | "overflow"
  | "disconnected"
  | "closed"
  | "signed_out"
  | "auth_error"
  | "invalid_data"
  | "message_too_large";

export declare class PresenceSendError extends Error {
  readonly name: "PresenceSendError";
  readonly code: SendErrorCode;
  readonly id: number | null;
  readonly data: unknown;
  /** The connection died after the frame left and before its ack: it may have been handled. */
  readonly maybeDelivered: boolean;
  constructor(
    code: SendErrorCode,
    message: string,
    details?: { id?: number | null; data?: unknown; maybeDelivered?: boolean },
  );
}

/** The gateway's error codes whose frame names a room (docs/protocol.md, Errors): the refusals
 * of a join, and of a publish (`PUBLISH_ERRORS`, which keep the room). */
export type RoomRefusal =
  | "invalid_room"
  | "room_forbidden"
  | "too_many_rooms"
  | "room_full"
  | "invalid_info"
  | "not_in_room"
  | "publish_forbidden";
export declare const ROOM_ERRORS: readonly RoomRefusal[];
export declare const PUBLISH_ERRORS: readonly ("not_in_room" | "publish_forbidden")[];

export declare class PresenceRoomError extends Error {
  readonly name: "PresenceRoomError";
  /** The gateway's refusal, or the client's state (`closed`, `signed_out`, `auth_error`). */
  readonly code:
    | Exclude<RoomRefusal, "not_in_room" | "publish_forbidden">
    | "closed"
    | "signed_out"
    | "auth_error";
  readonly room: string;
  constructor(code: string, message: string, room: string);
}

export declare class PresenceClient {
  constructor(options: PresenceClientOptions);
  readonly state: PresenceState;
  readonly userId: string;
  /** Messages waiting to be sent. */
  readonly buffered: number;
  /** Messages sent on the current socket and not yet acknowledged. */
  readonly unacked: number;
  /** Testing aid: set to false to stop answering pings and watch the inactivity sign-out. */
  answerPings: boolean;
  /** The durable stream's position (with `recover: true`). */
  readonly streamPosition: StreamPosition;
  /** Open the connection; a no-op while connecting, connected or waiting to reconnect. */
  connect(): void;
  /** Close for good (state `closed`); pending sends reject with code `closed`. */
  close(code?: number, reason?: string): void;
  /** Resolves with the gateway's ack; rejects with a PresenceSendError. Never throws. */
  send(data: unknown): Promise<Ack>;
  /** Rooms the client is in, or will join on its next socket (sorted). */
  readonly rooms: string[];
  /** Join a room, now or on the next socket, and again after every reconnect. Resolves on the
   * gateway's `joined`; rejects with a PresenceRoomError when refused or the client stops. */
  join(room: string, options?: JoinOptions): Promise<{ room: string; timestamp: string }>;
  /** Leave a room; resolves on the gateway's `left`, or at once when offline. Never rejects. */
  leave(room: string): Promise<{ room: string }>;
  /** A presence room's members as last heard: empty before its snapshot, after leaving it and
   * while disconnected. Copies. */
  members(room: string): PresenceMember[];
  /** Relay `data` to the room's other sockets. Not buffered, not acknowledged: true when the
   * frame goes out on the live socket, false when offline or not in the room. Throws a
   * PresenceSendError (`invalid_data`, `message_too_large`). */
  publish(room: string, data: unknown): boolean;
  /** Send the token `getToken` returns now if it changed (call from `onIdTokenChanged`). */
  refreshToken(): Promise<void>;
  on<E extends keyof PresenceEvents>(event: E, fn: (payload: PresenceEvents[E]) => void): () => void;
  onMessage(type: "ping", fn: (frame: PingFrame) => void): () => void;
  onMessage(type: string, fn: (frame: ServerFrame) => void): () => void;
}

export declare function backoffDelay(
  attempt: number,
  bounds?: { min?: number; max?: number },
  random?: () => number,
): number;
export declare function tokenExpiry(token: unknown): number | null;
export declare function refreshDelay(expiresAt: number, now: number, lead?: number): number;
export declare function socketUrl(
  base: string,
  userId: string,
  token?: string | null,
  params?: Record<string, string> | null,
): string;

export declare const DEFAULTS: Readonly<{
  bufferSize: number;
  backoff: Readonly<Required<BackoffOptions>>;
  tokenRefreshLead: number;
  tokenRetryDelay: number;
  rateLimit: Readonly<Required<RateLimitOptions>>;
  maxMessageBytes: number;
  connectTimeout: number;
}>;

export default PresenceClient;
