// The operator console (served by the gateway at /console when CONSOLE_ENABLED is on): sign in
// with an admin token or a Firebase account carrying the `admin` claim, then watch the
// deployment (GET /ws/console/overview every 2 s), look users and rooms up and act on them
// through the REST API, and read recent events. Every failure is shown on the page.
//
// Bundled by console/build.mjs (esbuild, with the Firebase JS SDK and uPlot) into
// dist/console/console.js.

import { Api } from "./api.js";
import { Charts } from "./charts.js";
import { $, say } from "./dom.js";
import { EventsPanel } from "./events.js";
import { OverviewPanel } from "./overview.js";
import { RoomPanel, UserPanel } from "./people.js";
import { Session, firebaseMessage } from "./session.js";

const POLL_MS = 2000;

const ui = {
  operator: $("operator"),
  signOut: $("console-sign-out"),
  globalError: $("global-error"),
  signInPanel: $("sign-in-panel"),
  tokenForm: $("token-form"),
  adminToken: $("admin-token"),
  firebaseForm: $("firebase-form"),
  email: $("email"),
  password: $("password"),
  firebaseUnavailable: $("firebase-unavailable"),
  signInError: $("sign-in-error"),
  consolePanel: $("console-panel"),
  pollError: $("poll-error"),
};

const session = new Session();
const api = new Api(session, (error) => signedOutBy(error));
const overview = new OverviewPanel(
  {
    totalSockets: $("total-sockets"),
    totalUsers: $("total-users"),
    liveInstances: $("live-instances"),
    instances: $("instances"),
    instancesEmpty: $("instances-empty"),
    rooms: $("busy-rooms"),
    roomsEmpty: $("busy-rooms-empty"),
    scope: $("scope"),
    updated: $("updated"),
    chartNote: $("chart-note"),
  },
  { onRoom: (room) => rooms.lookUp(room) },
);
const users = new UserPanel(api);
const rooms = new RoomPanel(api);
const events = new EventsPanel(api);
let charts = null;
// Bumped on every sign-in and sign-out, so a poll started for an earlier session stops.
let generation = 0;

// Nothing may fail silently: an error that escaped a handler is shown too.
window.addEventListener("error", (event) => say(ui.globalError, `Unexpected error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) =>
  say(ui.globalError, `Unexpected error: ${event.reason?.message ?? event.reason}`),
);

function show(signedIn) {
  ui.signInPanel.hidden = signedIn;
  ui.consolePanel.hidden = !signedIn;
  ui.signOut.hidden = !signedIn;
  ui.operator.hidden = !signedIn;
  ui.operator.textContent = signedIn ? `Signed in with ${session.label}` : "";
  document.body.dataset.signedIn = String(signedIn);
}

async function poll(mine) {
  if (mine !== generation) return;
  try {
    const [answer] = await Promise.all([api.get("/ws/console/overview"), events.refresh()]);
    if (mine !== generation) return;
    overview.render(answer);
    charts ??= new Charts($("charts"));
    charts.update(answer.series);
    say(ui.pollError, "");
    document.body.dataset.polled = String(Number(document.body.dataset.polled ?? 0) + 1);
  } catch (error) {
    if (mine !== generation) return;
    say(ui.pollError, `The overview could not be refreshed: ${error.message}`);
  }
  if (mine === generation) setTimeout(() => poll(mine), POLL_MS);
}

/** Check the credentials with a first overview; open the console if the gateway takes them. */
async function enter() {
  const mine = ++generation;
  try {
    await api.get("/ws/console/overview");
  } catch (error) {
    if (mine !== generation) return;
    await session.signOut();
    show(false);
    const words =
      error.status === 401 || error.status === 403
        ? `The gateway refused this sign-in: ${error.message}`
        : error.status === 404
          ? `The console is not enabled on this gateway: ${error.message}`
          : error.message;
    say(ui.signInError, words);
    return;
  }
  say(ui.signInError, "");
  say(ui.globalError, "");
  show(true);
  poll(mine);
}

/** The gateway stopped taking the operator's token (a rotated admin token, a revoked user). */
function signedOutBy(error) {
  // While signing in, enter() says why the gateway refused; this is for an open console.
  if (ui.consolePanel.hidden) return;
  generation += 1;
  session
    .signOut()
    .catch(() => {})
    .finally(() => {
      show(false);
      say(ui.signInError, `Signed out: the gateway no longer accepts this sign-in (${error.message}).`);
    });
}

ui.tokenForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = ui.adminToken.value.trim();
  if (!token) return say(ui.signInError, "Enter the admin token.");
  ui.adminToken.value = "";
  session.useAdminToken(token);
  await enter();
});

ui.firebaseForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  say(ui.signInError, "");
  try {
    await session.signInWithFirebase(ui.email.value.trim(), ui.password.value);
  } catch (error) {
    return say(ui.signInError, firebaseMessage(error));
  }
  ui.password.value = "";
  await enter();
});

ui.signOut.addEventListener("click", async () => {
  generation += 1;
  try {
    await session.signOut();
  } catch (error) {
    say(ui.globalError, `Sign-out failed: ${error.message}`);
  }
  say(ui.signInError, "");
  show(false);
});

async function main() {
  show(false);
  await session.start();
  if (session.firebaseError) say(ui.firebaseUnavailable, session.firebaseError);
  ui.firebaseForm.querySelector("button").disabled = !session.auth;
  if (session.signedIn) await enter();
  document.body.dataset.ready = "true";
}

main().catch((error) => say(ui.globalError, `The console failed to start: ${error.message}`));
