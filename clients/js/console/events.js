// Recent events from every instance (GET /ws/console/events), newest first, filtered by kind
// and user on the gateway's side; refreshed with the overview.

import { $, clock, el, fill, say } from "./dom.js";

const LIMIT = 200;

export class EventsPanel {
  constructor(api) {
    this.api = api;
    this.ui = {
      form: $("events-form"),
      kind: $("event-kind"),
      user: $("event-user"),
      list: $("events"),
      empty: $("events-empty"),
      error: $("events-error"),
      note: $("events-note"),
    };
    this.ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.refresh();
    });
    this.ui.kind.addEventListener("change", () => this.refresh());
    // Requests overlap (the poll, a filter change): only the latest one's answer is shown.
    this.latest = 0;
  }

  async refresh() {
    const { ui } = this;
    const mine = ++this.latest;
    const query = { limit: LIMIT, kind: ui.kind.value, user: ui.user.value.trim() };
    try {
      const answer = await this.api.get("/ws/console/events", query);
      if (mine !== this.latest) return;
      say(ui.error, "");
      this.render(answer, `${query.kind}|${query.user}`);
    } catch (error) {
      if (mine === this.latest) say(ui.error, error.message);
    }
  }

  render(answer, filter) {
    const { ui } = this;
    ui.list.dataset.filter = filter;
    const events = answer.events ?? [];
    const unreachable = answer.unreachable_instances ?? [];
    ui.note.textContent = unreachable.length
      ? `Not reached: ${unreachable.join(", ")}; their events are missing.`
      : "";
    fill(
      ui.list,
      events.map((e) =>
        el(
          "tr",
          { "data-testid": "event", dataset: { kind: e.kind, userId: e.user_id ?? "" } },
          el("td", {}, clock(e.at)),
          el("td", {}, el("span", { class: "kind", dataset: { kind: e.kind } }, e.kind)),
          el("td", { class: "mono" }, e.user_id ?? "–"),
          el("td", { class: "num" }, e.code ?? "–"),
          el("td", {}, e.reason ?? ""),
          el("td", { class: "mono small" }, e.instance_id),
        ),
      ),
    );
    ui.empty.hidden = events.length > 0;
  }
}
