// Looking up one user or one room, and acting on them through the gateway's REST API (the same
// routes and authorization a backend uses: the console adds no route of its own for actions).

import { segment } from "./api.js";
import { $, ago, clock, el, fill, num, parseObject, say } from "./dom.js";

/** Ask the operator to confirm in a modal dialog; resolves to true on "Sign out". */
export function confirmDialog(text) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

/** Run an action, showing its outcome (or the API's error) in `status`; returns its result. */
async function act(status, busy, action, describe) {
  for (const button of busy) button.disabled = true;
  say(status, "Working…", "info");
  try {
    const result = await action();
    say(status, describe(result), "ok");
    return result;
  } catch (error) {
    say(status, error.message, "error");
    return null;
  } finally {
    for (const button of busy) button.disabled = false;
  }
}

function reach(result) {
  const unreachable = result?.unreachable_instances ?? [];
  return unreachable.length ? ` (not reached: ${unreachable.join(", ")})` : "";
}

export class UserPanel {
  constructor(api) {
    this.api = api;
    this.userId = null;
    this.ui = {
      form: $("user-form"),
      input: $("user-id"),
      error: $("user-error"),
      result: $("user-result"),
      presence: $("user-presence"),
      sockets: $("user-sockets"),
      message: $("user-message"),
      send: $("user-send"),
      sendDurable: $("user-send-durable"),
      signOut: $("user-sign-out"),
      status: $("user-action-status"),
    };
    const { ui } = this;
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.lookUp(ui.input.value.trim());
    });
    ui.send.addEventListener("click", () => this.send(false));
    ui.sendDurable.addEventListener("click", () => this.send(true));
    ui.signOut.addEventListener("click", () => this.signOut());
  }

  get buttons() {
    return [this.ui.send, this.ui.sendDurable, this.ui.signOut];
  }

  async lookUp(userId) {
    const { ui } = this;
    if (!userId) return say(ui.error, "Enter a user id.");
    say(ui.error, "");
    try {
      const user = await this.api.get(`/ws/console/users/${segment(userId)}`);
      this.userId = user.user_id ?? userId;
      this.render(user);
    } catch (error) {
      // The actions act on the user shown: none is shown now.
      this.userId = null;
      ui.result.hidden = true;
      say(ui.error, error.message);
    }
  }

  render(user) {
    const { ui } = this;
    const now = Date.now() / 1000;
    const presence = user.presence;
    ui.result.hidden = false;
    ui.result.dataset.userId = this.userId;
    const sockets = user.sockets ?? [];
    ui.result.dataset.sockets = String(sockets.length);
    fill(
      ui.presence,
      el("strong", { "data-testid": "user-socket-count" }, `${sockets.length} socket${sockets.length === 1 ? "" : "s"}`),
      ` · presence: `,
      presence
        ? el(
            "span",
            { "data-testid": "user-presence-state", dataset: { state: presence.state } },
            presence.state === "online"
              ? `online (${num(presence.devices)} device${presence.devices === 1 ? "" : "s"})`
              : `offline, last seen ${ago(presence.last_seen_at, now)}`,
          )
        : "not recorded",
      reach(user),
    );
    fill(
      ui.sockets,
      sockets.map((s) =>
        el(
          "tr",
          { "data-testid": "user-socket", dataset: { instanceId: s.instance_id } },
          el("td", { class: "mono" }, s.instance_id),
          el("td", { class: "mono small" }, s.session_id),
          el("td", {}, clock(s.connected_at)),
          el("td", {}, ago(s.last_pong_at, now)),
          el("td", {}, (s.rooms ?? []).join(", ") || "–"),
          el("td", { class: "num" }, num(s.stream_offset)),
          el("td", { class: "small" }, s.client ?? "–"),
        ),
      ),
    );
  }

  async send(durable) {
    const { ui } = this;
    if (!this.userId) return say(ui.status, "Look a user up first.");
    let message;
    try {
      message = parseObject(ui.message.value);
    } catch (error) {
      return say(ui.status, error.message);
    }
    const path = `/ws/send/${segment(this.userId)}`;
    await act(
      ui.status,
      this.buttons,
      () => this.api.post(path, message, durable ? { durable: "true" } : undefined),
      (r) =>
        durable
          ? `Stored at offset ${num(r.offset)}; ${num(r.connections)} socket(s) took it${reach(r)}.`
          : `Sent to ${num(r.connections)} socket(s)${reach(r)}.`,
    );
  }

  async signOut() {
    const { ui } = this;
    if (!this.userId) return say(ui.status, "Look a user up first.");
    const userId = this.userId;
    const sure = await confirmDialog(
      `Sign ${userId} out of every device? Their sockets on every instance are closed and ` +
        "their current tokens refused: they must sign in again.",
    );
    if (!sure) return say(ui.status, "Sign-out cancelled.", "info");
    const result = await act(
      ui.status,
      this.buttons,
      () => this.api.post(`/ws/signout/${segment(userId)}`),
      (r) => `Signed out: ${num(r.connections_closed)} socket(s) closed${reach(r)}.`,
    );
    if (result) await this.lookUp(userId);
  }
}

export class RoomPanel {
  constructor(api) {
    this.api = api;
    this.room = null;
    this.ui = {
      form: $("room-form"),
      input: $("room-name"),
      error: $("room-error"),
      result: $("room-result"),
      summary: $("room-summary"),
      members: $("room-members"),
      message: $("room-message"),
      send: $("room-send"),
      status: $("room-action-status"),
    };
    this.ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.lookUp(this.ui.input.value.trim());
    });
    this.ui.send.addEventListener("click", () => this.send());
  }

  async lookUp(room) {
    const { ui } = this;
    ui.input.value = room;
    if (!room) return say(ui.error, "Enter a room name.");
    say(ui.error, "");
    try {
      // Presence is only kept for PRESENCE_ROOM_PREFIXES rooms: a 404 there is no error.
      const [members, presence] = await Promise.all([
        this.api.get(`/ws/rooms/${segment(room)}`),
        this.api.get(`/ws/rooms/${segment(room)}/presence`).catch((error) => {
          if (error.status === 404) return null;
          throw error;
        }),
      ]);
      this.room = room;
      this.render(members, presence);
    } catch (error) {
      this.room = null;
      ui.result.hidden = true;
      say(ui.error, error.message);
    }
  }

  render(members, presence) {
    const { ui } = this;
    ui.result.hidden = false;
    ui.result.dataset.room = this.room;
    const devices = new Map((presence?.members ?? []).map((m) => [m.user_id, m]));
    fill(
      ui.summary,
      el("strong", { "data-testid": "room-connections" }, `${num(members.connections)} socket(s)`),
      `, ${num(members.total_users)} user(s)`,
      members.truncated ? " (list truncated)" : "",
      presence ? ` · presence: ${num(presence.users)} user(s) online` : " · not a presence room",
      reach(members),
    );
    fill(
      ui.members,
      (members.members ?? []).map((m) => {
        const seen = devices.get(m.user_id);
        return el(
          "tr",
          { "data-testid": "room-member", dataset: { userId: m.user_id } },
          el("td", { class: "mono" }, m.user_id),
          el("td", { class: "mono small" }, m.session_id),
          el("td", { class: "mono" }, m.instance_id),
          el("td", {}, seen ? `${num(seen.devices)} device(s)` : "–"),
        );
      }),
    );
  }

  async send() {
    const { ui } = this;
    if (!this.room) return say(ui.status, "Look a room up first.");
    let message;
    try {
      message = parseObject(ui.message.value);
    } catch (error) {
      return say(ui.status, error.message);
    }
    await act(
      ui.status,
      [ui.send],
      () => this.api.post(`/ws/rooms/${segment(this.room)}/send`, message),
      (r) => `Sent to ${num(r.connections)} socket(s) of ${num(r.recipients)} user(s)${reach(r)}.`,
    );
  }
}
