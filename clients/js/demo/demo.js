// The demo page: sign in with Firebase Auth (against the Auth emulator), then hold a
// PresenceClient connection to the gateway and show what happens on it.
//
// Bundled by demo/build.mjs into dist/demo/demo.js; the gateway serves it at /demo/demo.js and
// its settings at /demo/config.json ({projectId, authEmulatorHost, firestoreEmulatorHost,
// gatewayUrl}). The Contacts panel (contacts.js) reads presence from Firestore, the Room panel
// (room.js) shows a presence room over the socket.

import { initializeApp } from "firebase/app";
import {
  browserLocalPersistence,
  connectAuthEmulator,
  createUserWithEmailAndPassword,
  indexedDBLocalPersistence,
  initializeAuth,
  onAuthStateChanged,
  onIdTokenChanged,
  signInWithEmailAndPassword,
  signOut,
} from "firebase/auth";
import { connectFirestoreEmulator, getFirestore } from "firebase/firestore";

import { PresenceClient, VERSION } from "../presence-client.js";
import { ContactsPanel } from "./contacts.js";
import { RoomPanel } from "./room.js";

// Frames that belong to the protocol itself; everything else is an application message.
const PROTOCOL_TYPES = new Set([
  "ping",
  "pong",
  "ack",
  "auth_ok",
  "error",
  "timeout",
  "signed_out",
  "joined",
  "left",
  "presence",
  "presence_diff",
  "publish",
]);
const LOG_LIMIT = 100;
const MESSAGE_LIMIT = 50;
// The badge's words for the client's states (`client.state`, kept in data-state and the title).
const STATE_LABELS = {
  idle: "Not connected",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  signed_out: "Signed out",
  auth_error: "Sign-in refused",
  closed: "Disconnected",
};
// States whose banner offers "Sign in again": a second, top-bar "Sign out" would only confuse.
const BANNER_STATES = new Set(["signed_out", "auth_error"]);
const SIGNED_OUT_TITLES = {
  "signed out for inactivity": "Signed out for inactivity. Sign in again to reconnect.",
  "signed out by the service": "Signed out by the service. Sign in again to reconnect.",
};
// What became of a message the page sent: the ack says only that the gateway took it.
const SENT_NOTE =
  "The gateway hands client messages to the application's message handler; the default one " +
  "only logs them, so nothing comes back unless your app answers (see examples/room_echo.py).";

const $ = (id) => document.getElementById(id);

const ui = {
  state: $("state"),
  user: $("user"),
  signOut: $("sign-out"),
  signInPanel: $("sign-in-panel"),
  signInForm: $("sign-in-form"),
  email: $("email"),
  password: $("password"),
  signIn: $("sign-in"),
  signInError: $("sign-in-error"),
  sessionPanel: $("session-panel"),
  answerPings: $("answer-pings"),
  pings: $("pings"),
  pongs: $("pongs"),
  pingLog: $("ping-log"),
  pingLogEmpty: $("ping-log-empty"),
  messages: $("messages"),
  messagesEmpty: $("messages-empty"),
  messageCount: $("message-count"),
  sendForm: $("send-form"),
  sendText: $("send-text"),
  send: $("send"),
  sendStatus: $("send-status"),
  sessionUid: $("session-uid"),
  copyUid: $("copy-uid"),
  restExample: $("rest-example"),
  copyRest: $("copy-rest"),
  copyStatus: $("copy-status"),
  signedOut: $("signed-out"),
  signedOutMessage: $("signed-out-message"),
  signedOutTitle: $("signed-out-title"),
  signInAgain: $("sign-in-again"),
  authError: $("auth-error"),
  authErrorMessage: $("auth-error-message"),
  authErrorSignIn: $("auth-error-sign-in"),
  version: $("version"),
  gateway: $("gateway"),
};

const contacts = new ContactsPanel({
  me: $("my-uid"),
  form: $("contact-form"),
  input: $("contact-uid"),
  list: $("contacts"),
});

const room = new RoomPanel({
  form: $("room-form"),
  roomName: $("room-name"),
  displayName: $("room-display-name"),
  join: $("room-join"),
  leave: $("room-leave"),
  status: $("room-status"),
  occupancy: $("room-occupancy"),
  members: $("room-members"),
  text: $("room-text"),
  typing: $("typing"),
});

let auth = null;
let db = null;
let config = null;
let client = null;
let unsubscribers = [];
let counts = { pings: 0, pongs: 0, messages: 0 };

// --- configuration ---------------------------------------------------------------------------

function defaultGatewayUrl() {
  return location.origin.replace(/^http/, "ws");
}

async function loadConfig() {
  const defaults = {
    projectId: "demo-presence",
    authEmulatorHost: "127.0.0.1:9099",
    firestoreEmulatorHost: "127.0.0.1:8080",
    gatewayUrl: defaultGatewayUrl(),
  };
  try {
    // Next to the bundle: /demo/config.json when the bundle is /demo/demo.js.
    const response = await fetch(new URL("config.json", import.meta.url), { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const loaded = await response.json();
    const merged = { ...defaults };
    for (const key of Object.keys(defaults)) {
      if (typeof loaded[key] === "string" && loaded[key]) merged[key] = loaded[key];
    }
    return { ...merged, source: "config.json" };
  } catch (error) {
    console.warn("presence demo: config.json not loaded, using defaults", error);
    return { ...defaults, source: "defaults" };
  }
}

/** The gateway's HTTP base URL (for the REST examples) from its socket URL. */
function httpBase(gatewayUrl) {
  return String(gatewayUrl)
    .replace(/^ws(s?):\/\//i, "http$1://")
    .replace(/\/+$/, "");
}

/** A one-line curl command that sends `uid` a message through the gateway's REST API. */
function sendExample(gatewayUrl, uid) {
  const url = `${httpBase(gatewayUrl)}/ws/send/${encodeURIComponent(uid)}`;
  return (
    `curl -s -X POST -H "Authorization: Bearer $GATEWAY_ADMIN_TOKEN" ` +
    `-H "Content-Type: application/json" ${url} -d '{"type": "hello", "data": {"text": "hi"}}'`
  );
}

/** "127.0.0.1:8080" or "[::1]:8080" as [host, port]. */
function splitHost(hostPort) {
  const at = hostPort.lastIndexOf(":");
  const host = hostPort.slice(0, at).replace(/^\[(.*)\]$/, "$1");
  return [host, Number(hostPort.slice(at + 1))];
}

// --- rendering -------------------------------------------------------------------------------

function timeOf(date) {
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

function renderState(state) {
  ui.state.textContent = STATE_LABELS[state] ?? state;
  ui.state.dataset.state = state;
  ui.state.title = `Connection state (client.state: ${state})`;
  ui.signOut.hidden = ui.sessionPanel.hidden || BANNER_STATES.has(state);
  const connected = state === "connected";
  ui.send.disabled = !(connected || state === "connecting" || state === "reconnecting");
}

function addLog(kind, text) {
  const now = new Date();
  const item = document.createElement("li");
  item.className = `kind-${kind}`;
  item.dataset.kind = kind;
  const label = document.createElement("span");
  label.textContent = text;
  const stamp = document.createElement("time");
  stamp.dateTime = now.toISOString();
  stamp.textContent = timeOf(now);
  item.append(label, stamp);
  ui.pingLog.prepend(item);
  while (ui.pingLog.children.length > LOG_LIMIT) ui.pingLog.lastElementChild.remove();
  ui.pingLogEmpty.hidden = true;
}

function addMessage(frame) {
  counts.messages += 1;
  ui.messageCount.textContent = `${counts.messages} received`;
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.testid = "message";
  item.dataset.type = String(frame.type ?? "");
  item.dataset.json = JSON.stringify(frame);
  const head = document.createElement("div");
  head.className = "message-head";
  const pill = document.createElement("span");
  pill.className = "pill";
  pill.textContent = String(frame.type ?? "message");
  const stamp = document.createElement("time");
  stamp.className = "muted small";
  stamp.textContent = timeOf(new Date());
  head.append(pill, stamp);
  const body = document.createElement("pre");
  body.textContent = JSON.stringify(frame, null, 2);
  item.append(head, body);
  ui.messages.prepend(item);
  while (ui.messages.children.length > MESSAGE_LIMIT) ui.messages.lastElementChild.remove();
  ui.messagesEmpty.hidden = true;
}

function resetSessionView() {
  counts = { pings: 0, pongs: 0, messages: 0 };
  ui.pings.textContent = "0";
  ui.pongs.textContent = "0";
  ui.messageCount.textContent = "0 received";
  ui.pingLog.replaceChildren();
  ui.messages.replaceChildren();
  ui.pingLogEmpty.hidden = false;
  ui.messagesEmpty.hidden = false;
  ui.sendStatus.textContent = "";
  ui.copyStatus.textContent = "";
  ui.signedOut.hidden = true;
  ui.authError.hidden = true;
}

function showSignIn() {
  ui.sessionPanel.hidden = true;
  ui.signInPanel.hidden = false;
  ui.user.hidden = true;
  ui.signOut.hidden = true;
  ui.signIn.disabled = false;
}

function showSession(user) {
  ui.signInPanel.hidden = true;
  ui.sessionPanel.hidden = false;
  ui.user.hidden = false;
  ui.user.textContent = user.email ?? user.uid;
  ui.user.title = `uid ${user.uid}`;
  ui.signOut.hidden = BANNER_STATES.has(ui.state.dataset.state);
  ui.sessionUid.textContent = user.uid;
  ui.restExample.textContent = sendExample(config.gatewayUrl, user.uid);
}

/** Put the text of `element` on the clipboard; where the browser refuses, select it instead. */
async function copyText(element, what) {
  const text = element.textContent;
  try {
    await navigator.clipboard.writeText(text);
    ui.copyStatus.textContent = `${what} copied.`;
  } catch {
    // No clipboard access (an insecure origin, a denied permission): leave it one keypress away.
    getSelection().selectAllChildren(element);
    ui.copyStatus.textContent = `${what} selected: press Ctrl+C (⌘C) to copy it.`;
  }
}

// --- the presence connection -----------------------------------------------------------------

function stopClient() {
  room.detach();
  contacts.stop();
  for (const off of unsubscribers) off();
  unsubscribers = [];
  if (client) client.close();
  client = null;
}

function startClient(user) {
  stopClient();
  resetSessionView();
  client = new PresenceClient({
    url: config.gatewayUrl,
    userId: user.uid,
    getToken: ({ forceRefresh }) => {
      const current = auth.currentUser;
      if (!current) throw new Error("not signed in");
      return current.getIdToken(forceRefresh);
    },
    answerPings: ui.answerPings.checked,
  });
  window.presenceDemo.client = client;
  const on = (event, fn) => unsubscribers.push(client.on(event, fn));

  on("state", ({ state }) => renderState(state));
  on("connected", () => addLog("conn", "Connected"));
  on("disconnected", ({ code, reason, willReconnect, delay }) => {
    const why = reason ? `${code} ${reason}` : `${code}`;
    let next = "";
    if (willReconnect) next = delay < 50 ? ", reconnecting now" : `, reconnecting in ${(delay / 1000).toFixed(1)} s`;
    addLog("conn", `Disconnected (${why})${next}`);
  });
  on("ping", () => {
    counts.pings += 1;
    ui.pings.textContent = String(counts.pings);
    addLog(client.answerPings ? "ping" : "skip", client.answerPings ? "Ping received" : "Ping received, not answered");
  });
  on("pong", () => {
    counts.pongs += 1;
    ui.pongs.textContent = String(counts.pongs);
    addLog("pong", "Pong sent");
  });
  on("message", (frame) => {
    if (!PROTOCOL_TYPES.has(frame.type)) addMessage(frame);
  });
  on("signedOut", ({ reason, message, code }) => {
    ui.signedOutMessage.textContent = message
      ? `The gateway said: “${message}”`
      : `The gateway closed the connection (${code}).`;
    ui.signedOut.hidden = false;
    ui.signedOut.dataset.reason = reason;
    ui.signedOutTitle.textContent =
      SIGNED_OUT_TITLES[reason] ?? `Signed out (${reason}). Sign in again to reconnect.`;
    addLog("conn", reason.charAt(0).toUpperCase() + reason.slice(1));
  });
  on("authError", ({ code, reason }) => {
    ui.authErrorMessage.textContent = `The gateway refused the sign-in token: ${reason} (${code}).`;
    ui.authError.hidden = false;
  });
  on("overflow", ({ id }) => {
    ui.sendStatus.textContent = `Message ${id} dropped: the offline buffer is full.`;
  });
  renderState(client.state);
  room.attach(client, user.uid, user.email?.split("@")[0] ?? user.uid);
  contacts.start(db, user.uid);
  client.connect();
}

// --- auth ------------------------------------------------------------------------------------

function describeAuthError(error) {
  switch (error?.code) {
    case "auth/invalid-email":
      return "That email address is not valid.";
    case "auth/missing-password":
    case "auth/weak-password":
      return "Choose a password of at least 6 characters.";
    case "auth/wrong-password":
    case "auth/email-already-in-use":
    case "auth/invalid-credential":
    case "auth/invalid-login-credentials":
      return "Wrong password for this account.";
    case "auth/network-request-failed":
      return `Cannot reach the Auth emulator at ${config.authEmulatorHost}.`;
    case "auth/too-many-requests":
      return "Too many attempts; wait a moment and try again.";
    default:
      return error?.message ?? String(error);
  }
}

async function signInOrCreate(email, password) {
  try {
    return await signInWithEmailAndPassword(auth, email, password);
  } catch (error) {
    // A new email: create the account (the same calls a real app's sign-up makes). Projects
    // with email enumeration protection answer invalid-credential for an unknown email too;
    // creating then fails with email-already-in-use when the password was simply wrong.
    const unknown = ["auth/user-not-found", "auth/invalid-credential", "auth/invalid-login-credentials"];
    if (!unknown.includes(error?.code)) throw error;
    return await createUserWithEmailAndPassword(auth, email, password);
  }
}

async function onSignInSubmit(event) {
  event.preventDefault();
  ui.signInError.hidden = true;
  const email = ui.email.value.trim();
  const password = ui.password.value;
  if (!email || !password) {
    ui.signInError.textContent = "Enter an email and a password.";
    ui.signInError.hidden = false;
    return;
  }
  ui.signIn.disabled = true;
  try {
    await signInOrCreate(email, password);
    ui.password.value = "";
    // onAuthStateChanged takes it from here.
  } catch (error) {
    ui.signInError.textContent = describeAuthError(error);
    ui.signInError.hidden = false;
    ui.signIn.disabled = false;
  }
}

async function endSession() {
  ui.signedOut.hidden = true;
  ui.authError.hidden = true;
  stopClient();
  renderState("idle");
  await signOut(auth);
}

async function onSend(event) {
  event.preventDefault();
  const text = ui.sendText.value.trim();
  if (!text || !client) return;
  ui.sendText.value = "";
  const queued = client.state !== "connected";
  ui.sendStatus.textContent = queued
    ? "Offline: queued, it goes out when the connection is back."
    : "Sent, waiting for the gateway's ack…";
  try {
    const ack = await client.send({ text });
    // The ack's ISO time read as the log's clock time (the gateway's own text if unparsable).
    const at = new Date(ack.timestamp);
    const when = Number.isNaN(at.getTime()) ? ack.timestamp : timeOf(at);
    ui.sendStatus.textContent =
      `Message ${ack.id} delivered to the gateway (acknowledged at ${when}). ${SENT_NOTE}`;
  } catch (error) {
    ui.sendStatus.textContent = `Not delivered (${error.code}): ${error.message}`;
  }
}

// --- start -----------------------------------------------------------------------------------

async function main() {
  window.presenceDemo = { client: null, auth: null, config: null, version: VERSION };
  renderState("idle");
  ui.version.textContent = `@presence/client ${VERSION}`;
  config = await loadConfig();
  window.presenceDemo.config = config;
  ui.gateway.textContent = `gateway ${config.gatewayUrl} · project ${config.projectId}`;

  const app = initializeApp({
    apiKey: "demo-key",
    authDomain: `${config.projectId}.firebaseapp.com`,
    projectId: config.projectId,
  });
  // initializeAuth without a popup/redirect resolver: email and password need no iframe from
  // the auth domain, so the page loads nothing from outside this origin and the emulator.
  auth = initializeAuth(app, { persistence: [indexedDBLocalPersistence, browserLocalPersistence] });
  connectAuthEmulator(auth, `http://${config.authEmulatorHost}`, { disableWarnings: true });
  window.presenceDemo.auth = auth;
  // The Contacts panel reads presence/{uid} as the signed-in user (firestore.rules decide).
  db = getFirestore(app);
  const [firestoreHost, firestorePort] = splitHost(config.firestoreEmulatorHost);
  connectFirestoreEmulator(db, firestoreHost, firestorePort);

  ui.signInForm.addEventListener("submit", onSignInSubmit);
  ui.signOut.addEventListener("click", endSession);
  ui.signInAgain.addEventListener("click", endSession);
  ui.authErrorSignIn.addEventListener("click", endSession);
  ui.sendForm.addEventListener("submit", onSend);
  ui.copyUid.addEventListener("click", () => copyText(ui.sessionUid, "User id"));
  ui.copyRest.addEventListener("click", () => copyText(ui.restExample, "Command"));
  ui.answerPings.addEventListener("change", () => {
    if (client) client.answerPings = ui.answerPings.checked;
  });

  let currentUid = null;
  onAuthStateChanged(auth, (user) => {
    if (user) {
      showSession(user);
      if (user.uid !== currentUid) startClient(user);
      currentUid = user.uid;
    } else {
      currentUid = null;
      // Firebase signs the user out by itself when a refresh fails for good (a revoked
      // session): keep showing why the connection ended.
      const last = client?.state;
      stopClient();
      if (last !== "auth_error" && last !== "signed_out") renderState("idle");
      showSignIn();
    }
  });
  // The SDK refreshed the token by itself: hand it to the open socket at once.
  onIdTokenChanged(auth, (user) => {
    if (user && client) client.refreshToken();
  });
}

main().catch((error) => {
  console.error("presence demo failed to start", error);
  ui.signInError.textContent = `The page could not start: ${error?.message ?? error}`;
  ui.signInError.hidden = false;
  ui.signInPanel.hidden = false;
});
