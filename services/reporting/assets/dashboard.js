// FinFlow dashboard: plain SVG bar charts, no library and no network beyond our API.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("finflow.token", fromHash);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("finflow.token");
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Draws bars for [{label, value}] into the svg with the given id.
function bars(id, rows, cls) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  if (!rows.length) {
    svg.appendChild(el("text", { x: 10, y: 30, class: "label empty" }, "no data yet"));
    return;
  }
  const width = svg.clientWidth || 420, height = 220, pad = 28;
  const max = Math.max(...rows.map(r => r.value), 1);
  const step = (width - pad) / rows.length;
  rows.forEach((r, i) => {
    const h = Math.max(2, (height - 2 * pad) * r.value / max);
    const x = pad / 2 + i * step + step * 0.15, y = height - pad - h;
    svg.appendChild(el("rect", { class: "bar " + (cls || ""), x, y, width: step * 0.7, height: h, "data-value": r.value }));
    svg.appendChild(el("text", { class: "value", x: x, y: y - 4 }, String(r.value)));
    svg.appendChild(el("text", { class: "label", x: x, y: height - pad + 14 }, r.label));
  });
}

// Draws horizontal bars for [{label, value}]: for many long names (queues).
function hbars(id, rows, cls) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  if (!rows.length) {
    svg.appendChild(el("text", { x: 10, y: 30, class: "label empty" }, "no data yet"));
    return;
  }
  const width = svg.clientWidth || 420, height = 220, labels = Math.min(230, width / 2);
  const max = Math.max(...rows.map(r => r.value), 1);
  const step = (height - 8) / rows.length;
  rows.forEach((r, i) => {
    const y = 4 + i * step, barHeight = step * 0.6;
    const w = Math.max(2, (width - labels - 48) * r.value / max);
    svg.appendChild(el("text", { class: "label", x: 4, y: y + barHeight - 2 }, r.label));
    svg.appendChild(el("rect", { class: "bar " + (cls || ""), x: labels, y, width: w, height: barHeight, "data-value": r.value }));
    svg.appendChild(el("text", { class: "value", x: labels + w + 6, y: y + barHeight - 2 }, String(r.value)));
  });
}

async function load() {
  const t = token();
  if (!t) return showLogin();
  const res = await fetch("/api/v1/reports/summary", { headers: { authorization: "Bearer " + t } });
  if (res.status === 401 || res.status === 403) {
    sessionStorage.removeItem("finflow.token");
    return showLogin("this account cannot read reports");
  }
  const body = await res.json();
  if (!body.success) throw new Error(body.error && body.error.message);
  const s = body.data;
  document.getElementById("charts").hidden = false;
  bars("volume", s.volume_by_day.map(d => ({ label: d.day.slice(5) + " " + d.currency, value: Number(d.amount) })));
  bars("statuses", s.by_status.map(c => ({ label: c.key, value: c.count })), "alt");
  bars("funnel", s.users.kyc_funnel.map(c => ({ label: c.key, value: c.count })), "warn");
  const age = s.last_event_at ? Math.round((Date.now() - Date.parse(s.last_event_at)) / 1000) : null;
  // Messages waiting per queue as RabbitMQ reports them, with its consumers; the dead
  // letters of every queue together in one bar (anything there needs a person).
  const queues = s.queue_health ? s.queue_health.queues : [];
  const dead = queues.filter(q => q.queue.endsWith(".dead"));
  hbars("queue", queues.filter(q => !q.queue.endsWith(".dead"))
    .map(q => ({ label: q.queue + " (" + q.consumers + ")", value: q.messages }))
    .concat(dead.length ? [{ label: "dead letters", value: dead.reduce((n, q) => n + q.messages, 0) }] : []));
  const onHold = s.compliance.on_hold.reduce((n, h) => n + h.payments, 0);
  document.getElementById("status").textContent =
    (age === null ? "no events yet" : "updated " + age + " s ago") +
    " · " + s.events_processed + " events processed · " + onHold + " payments on hold";
  document.body.dataset.loaded = "true";
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("charts").hidden = true;
  document.getElementById("status").textContent = "signed out";
  if (message) document.getElementById("error").textContent = message;
}

document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const res = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: document.getElementById("email").value, password: document.getElementById("password").value }),
  });
  const body = await res.json();
  if (!body.success) return showLogin(body.error.message);
  sessionStorage.setItem("finflow.token", body.data.access_token);
  document.getElementById("login").hidden = true;
  load();
});

load().catch(err => { document.getElementById("status").textContent = "error: " + err.message; });
