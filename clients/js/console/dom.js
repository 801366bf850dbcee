// Small DOM and formatting helpers shared by the console's panels (no framework).

export const $ = (id) => document.getElementById(id);

/**
 * An element with attributes and children: el("td", {class: "num"}, "3").
 * Text is always set as text, never as HTML: ids and reasons come from clients.
 */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat()) if (child) node.append(child);
}

/** Show a message (or hide the node when the message is empty). */
export function say(node, message, kind = "error") {
  node.textContent = message ?? "";
  node.dataset.kind = kind;
  node.hidden = !message;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Epoch seconds as local HH:MM:SS ("–" when unknown). */
export function clock(epoch) {
  if (epoch === null || epoch === undefined) return "–";
  const d = new Date(epoch * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A duration in seconds as "42 s", "3 min 5 s", "2 h 10 min". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** How long ago an epoch was, against the server's clock (`now`, epoch seconds). */
export function ago(epoch, now) {
  if (epoch === null || epoch === undefined) return "–";
  return `${duration(now - epoch)} ago`;
}

/** A number for a table cell ("–" for null). */
export function num(value) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toLocaleString("en-US") : String(value);
}

/** The JSON object typed in a textarea, or an Error saying what is wrong with it. */
export function parseObject(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`The message is not valid JSON: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error("The message must be a JSON object, like {\"type\": \"note\", \"data\": {}}");
  }
  return value;
}
