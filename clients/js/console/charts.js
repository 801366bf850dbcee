// The overview's series as uPlot charts: one small chart per figure, redrawn on every poll.
// uPlot draws on canvas from plain arrays ([t, ...series], t in epoch seconds), so the series
// go in as the gateway sends them.

import uPlot from "uplot";

import { clock, el } from "./dom.js";

const COLORS = ["#3b5bdb", "#12805c", "#c0262d", "#b54708", "#7048e8"];

/** What each chart shows: its title, unit and the series' paths in `overview.series`. */
const CHARTS = [
  { id: "connections", title: "Connections", unit: "sockets", lines: [["Sockets", "connections"]] },
  {
    id: "pongs",
    title: "Pongs per second",
    unit: "/s",
    lines: [
      ["Received", "pongs_received_per_s"],
      ["Persisted", "pongs_persisted_per_s"],
    ],
  },
  {
    id: "signouts",
    title: "Sign-outs per minute",
    unit: "/min",
    lines: [
      ["Timeout", "signouts_per_min.timeout"],
      ["Sign-out", "signouts_per_min.signout"],
      ["Instance lost", "signouts_per_min.instance_lost"],
    ],
  },
  {
    id: "fanout",
    title: "Fan-out latency",
    unit: "ms",
    lines: [
      ["p50", "fanout_latency_ms.p50"],
      ["p99", "fanout_latency_ms.p99"],
    ],
  },
  { id: "durable", title: "Durable sends per second", unit: "/s", lines: [["Stored", "durable_sends_per_s"]] },
];

const HEIGHT = 160;

/** A series' values by dotted path, or nulls (a gap) when the gateway sends none. */
function values(series, path, length) {
  let value = series;
  for (const key of path.split(".")) value = value?.[key];
  return Array.isArray(value) && value.length === length ? value : new Array(length).fill(null);
}

function latest(list) {
  for (let i = list.length - 1; i >= 0; i -= 1) if (list[i] !== null) return list[i];
  return null;
}

function round(value) {
  if (value === null || value === undefined) return "–";
  return Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 1);
}

export class Charts {
  constructor(container) {
    this.container = container;
    this.plots = new Map();
    this.readouts = new Map();
    for (const spec of CHARTS) {
      const readout = el("span", { class: "muted small", "data-testid": `chart-now-${spec.id}` });
      const target = el("div", { class: "chart-canvas" });
      container.append(
        el(
          "figure",
          { class: "chart", "data-testid": `chart-${spec.id}` },
          el("figcaption", {}, el("span", {}, `${spec.title} (${spec.unit})`), readout),
          target,
        ),
      );
      this.readouts.set(spec.id, readout);
      this.plots.set(spec.id, { spec, target, plot: null });
    }
    // Charts follow their card's width (uPlot sizes in pixels).
    new ResizeObserver(() => this.resize()).observe(container);
  }

  width(target) {
    return Math.max(240, Math.floor(target.clientWidth || 320));
  }

  resize() {
    for (const { target, plot } of this.plots.values()) {
      plot?.setSize({ width: this.width(target), height: HEIGHT });
    }
  }

  /** Draw `overview.series` ({t: [...], ...}). */
  update(series) {
    const t = Array.isArray(series?.t) ? series.t : [];
    for (const [id, entry] of this.plots) {
      const lines = entry.spec.lines.map(([, path]) => values(series, path, t.length));
      const data = [t, ...lines];
      if (!entry.plot) entry.plot = this.create(entry, data);
      else entry.plot.setData(data);
      const now = entry.spec.lines.map(([label], i) => `${label} ${round(latest(lines[i]))}`);
      this.readouts.get(id).textContent = now.join(" · ");
    }
  }

  create({ spec, target }, data) {
    const options = {
      width: this.width(target),
      height: HEIGHT,
      scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [
        {},
        ...spec.lines.map(([label], i) => ({
          label,
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: false,
          value: (_u, v) => round(v),
        })),
      ],
      // Local HH:MM:SS under the x axis; the legend names the lines (the readout above each
      // chart holds the latest values, so the legend need not follow the cursor).
      axes: [{ values: (_u, splits) => splits.map((s) => clock(s)) }, { size: 48 }],
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
    };
    return new uPlot(options, data, target);
  }
}
