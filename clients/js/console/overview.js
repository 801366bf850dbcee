// The deployment at a glance, from GET /ws/console/overview: the totals, one row per instance
// (an instance that stopped answering stays listed, marked as gone) and the busiest rooms.

import { ago, duration, el, fill, num } from "./dom.js";

/** Instance states in words; anything but "live" is gone from the deployment's point of view. */
const STATES = {
  live: "live",
  unreachable: "not answering",
  lost: "gone (lost)",
  stopped: "gone (stopped)",
};

const PUBSUB = { ok: "ok", down: "down", off: "off (single instance)" };

function instanceRow(instance, now) {
  const gone = instance.state !== "live";
  const backlog = instance.pong_backlog;
  return el(
    "tr",
    {
      class: gone ? "gone" : null,
      "data-testid": "instance",
      dataset: { instanceId: instance.instance_id, state: instance.state },
    },
    el("td", { class: "mono" }, instance.instance_id),
    el(
      "td",
      {},
      el(
        "span",
        { class: "state", "data-testid": "instance-state", dataset: { state: instance.state } },
        STATES[instance.state] ?? instance.state,
      ),
    ),
    el("td", { class: "num", "data-testid": "instance-sockets" }, gone ? "–" : num(instance.sockets)),
    el("td", { class: "num", "data-testid": "instance-users" }, gone ? "–" : num(instance.users)),
    el("td", { class: "num" }, gone ? "–" : num(backlog)),
    el("td", { class: "num" }, gone ? "–" : duration(instance.oldest_pong_age_seconds)),
    el("td", {}, ago(instance.last_heartbeat_at, now)),
    el("td", { dataset: { pubsub: instance.pubsub ?? "" } }, PUBSUB[instance.pubsub] ?? instance.pubsub ?? "–"),
    el("td", { class: "mono small" }, instance.version ?? "–"),
    el("td", { class: "small" }, instance.started_at ? ago(instance.started_at, now) : "–"),
  );
}

export class OverviewPanel {
  /** ui: the elements it fills (totals, instances' tbody, busiest rooms' list, scope, times). */
  constructor(ui, { onRoom }) {
    this.ui = ui;
    this.onRoom = onRoom;
  }

  render(overview) {
    const { ui } = this;
    const now = overview.generated_at ?? Date.now() / 1000;
    const instances = overview.instances ?? [];
    const live = instances.filter((i) => i.state === "live").length;
    ui.totalSockets.textContent = num(overview.totals?.sockets ?? 0);
    // Users counted once across instances; past the exact limit the gateway estimates.
    const exact = overview.totals?.users_exact !== false;
    ui.totalUsers.textContent = `${exact ? "" : "≈ "}${num(overview.totals?.users ?? 0)}`;
    ui.liveInstances.textContent = `${live} / ${instances.length}`;
    ui.scope.dataset.scope = overview.scope;
    ui.scope.textContent =
      overview.scope === "deployment"
        ? "whole deployment"
        : "this instance only: the other instances could not be asked";
    ui.updated.textContent = `updated ${new Date(now * 1000).toLocaleTimeString()}`;
    const step = overview.interval_seconds;
    ui.chartNote.textContent = `whole deployment${step ? `, one point every ${step} s` : ""}`;

    const rows = [...instances].sort(
      (a, b) => (a.state !== "live") - (b.state !== "live") || a.instance_id.localeCompare(b.instance_id),
    );
    fill(ui.instances, rows.map((instance) => instanceRow(instance, now)));
    ui.instancesEmpty.hidden = rows.length > 0;

    const rooms = overview.rooms ?? [];
    fill(
      ui.rooms,
      rooms.map((room) =>
        el(
          "li",
          { "data-testid": "busy-room" },
          el("button", { class: "link", type: "button", onclick: () => this.onRoom(room.room) }, room.room),
          el("span", { class: "muted small" }, ` ${num(room.connections)} sockets`),
        ),
      ),
    );
    ui.roomsEmpty.hidden = rooms.length > 0;
  }
}
