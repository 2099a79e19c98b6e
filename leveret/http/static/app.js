// Leveret's management page: plain JavaScript over the management API (/api/...), no build step.
// Credentials are kept in sessionStorage (this tab only) and sent as HTTP basic auth with every request.
"use strict";

const POLL_MS = 3000;
const AUTH_KEY = "leveret.auth";
const $ = (id) => document.getElementById(id);
let pollTimer = null;
let previous = {}; // counters of the last poll, for rates when the API gives none: key -> {t, value}

// --- API -----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

async function api(method, path, body, headers = {}) {
  const init = {method, headers: {"Authorization": "Basic " + sessionStorage.getItem(AUTH_KEY),
                                  "X-Requested-With": "XMLHttpRequest", ...headers}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("api/" + path, init);
  const text = await response.text();
  const value = text && (response.headers.get("Content-Type") || "").startsWith("application/json")
    ? JSON.parse(text) : null;
  if (!response.ok) {
    // A 401 is also how the API refuses one operation (a permission pattern): log out only when the
    // credentials themselves no longer work.
    if (response.status === 401 && !path.startsWith("whoami") && !(await credentialsWork())) {
      logout("Session expired or not authorised");
    }
    throw new ApiError(response.status, (value && value.reason) || response.statusText);
  }
  return value;
}

async function credentialsWork() {
  const response = await fetch("api/whoami", {headers: {
    "Authorization": "Basic " + sessionStorage.getItem(AUTH_KEY), "X-Requested-With": "XMLHttpRequest"}});
  return response.ok;
}

const enc = encodeURIComponent;
const vhost = () => $("vhost").value || "/";

// --- small DOM helpers ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "ok";
}

function fail(err) {
  say(err instanceof ApiError ? `${err.status}: ${err.message}` : String(err), true);
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: 8, class: "empty"}, empty))]));
}

function formatRate(value) {
  return value === undefined || value === null ? "–" : (Math.round(value * 10) / 10).toFixed(1);
}

// A counter's rate: RabbitMQ's `<name>_details.rate` when the API gives it, else computed from two polls.
function rate(key, stats, name) {
  stats = stats || {};
  const details = stats[name + "_details"];
  if (details && typeof details.rate === "number") return details.rate;
  const now = Date.now() / 1000;
  const value = stats[name] || 0;
  const before = previous[key + "/" + name];
  previous[key + "/" + name] = {t: now, value};
  if (!before || now <= before.t || value < before.value) return undefined;
  return (value - before.value) / (now - before.t);
}

// --- views ---------------------------------------------------------------------------------------

async function showOverview() {
  const o = await api("GET", "overview");
  $("node").textContent = `${o.product_name} ${o.product_version} on node ${o.node}`;
  $("rate-publish").textContent = formatRate(rate("overview", o.message_stats, "publish"));
  $("rate-deliver").textContent = formatRate(rate("overview", o.message_stats, "deliver_get"));
  $("rate-ack").textContent = formatRate(rate("overview", o.message_stats, "ack"));
  const rows = [
    ["Connections", o.object_totals.connections], ["Channels", o.object_totals.channels],
    ["Queues", o.object_totals.queues], ["Exchanges", o.object_totals.exchanges],
    ["Consumers", o.object_totals.consumers], ["Messages ready", o.queue_totals.messages_ready],
    ["Messages unacked", o.queue_totals.messages_unacknowledged],
  ];
  $("totals").tBodies[0].replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
}

async function showQueues() {
  const queues = await api("GET", "queues");
  $("queue-names").replaceChildren(...queues.filter((q) => q.vhost === vhost()).map((q) => el("option", {value: q.name})));
  fill($("queue-rows"), queues.map((q) => {
    const key = `queue/${q.vhost}/${q.name}`;
    const path = `${enc(q.vhost)}/${enc(q.name)}`;
    return el("tr", {"data-queue": q.name},
      el("td", {}, q.vhost), el("td", {class: "name"}, q.name), el("td", {}, q.messages_ready),
      el("td", {}, q.messages_unacknowledged), el("td", {}, q.consumers),
      el("td", {}, formatRate(rate(key, q.message_stats, "publish"))),
      el("td", {}, formatRate(rate(key, q.message_stats, "deliver_get"))),
      el("td", {class: "actions"},
        el("button", {type: "button", onclick: () => act(`Purge queue '${q.name}'?`,
          () => api("DELETE", `queues/${path}/contents`), `Queue '${q.name}' purged`)}, "Purge"),
        el("button", {type: "button", class: "danger", onclick: () => act(`Delete queue '${q.name}'?`,
          () => api("DELETE", `queues/${path}`), `Queue '${q.name}' deleted`)}, "Delete")));
  }), "No queues");
}

async function showExchanges() {
  const exchanges = await api("GET", "exchanges");
  $("exchange-names").replaceChildren(
    ...exchanges.filter((x) => x.vhost === vhost() && x.name).map((x) => el("option", {value: x.name})));
  fill($("exchange-rows"), exchanges.map((x) => el("tr", {},
    el("td", {}, x.vhost), el("td", {class: "name"}, x.name || "(AMQP default)"), el("td", {}, x.type),
    el("td", {}, x.durable ? "yes" : "no"), el("td", {}, x.internal ? "yes" : "no"))), "No exchanges");
}

async function showConnections() {
  const connections = await api("GET", "connections");
  fill($("connection-rows"), connections.map((c) => el("tr", {"data-connection": c.name},
    el("td", {class: "name"}, c.name), el("td", {}, c.user), el("td", {}, c.vhost), el("td", {}, c.channels),
    el("td", {}, c.state),
    el("td", {class: "actions"}, el("button", {type: "button", class: "danger", onclick: () => act(
      `Close connection ${c.name}?`,
      () => api("DELETE", `connections/${enc(c.name)}`, undefined, {"X-Reason": "Closed via management page"}),
      "Connection closed")}, "Close")))), "No connections");
}

const VIEWS = {overview: showOverview, queues: showQueues, exchanges: showExchanges,
               connections: showConnections, publish: showExchanges, get: showQueues};

async function act(question, action, done) {
  if (!window.confirm(question)) return;
  try {
    await action();
    say(done);
    await refresh();
  } catch (err) {
    fail(err);
  }
}

function currentView() {
  const name = location.hash.slice(1);
  return name in VIEWS ? name : "overview";
}

async function refresh() {
  const name = currentView();
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== name;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.getAttribute("href") === "#" + name);
  }
  try {
    await VIEWS[name]();
  } catch (err) {
    fail(err);
  }
}

function startPolling() {
  clearInterval(pollTimer);
  pollTimer = setInterval(() => {
    if (["overview", "queues", "connections"].includes(currentView())) refresh();
  }, POLL_MS);
}

// --- forms ---------------------------------------------------------------------------------------

function onSubmit(id, handler) {
  $(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await handler(new FormData(event.target), event.target);
    } catch (err) {
      fail(err);
    }
  });
}

onSubmit("login-form", async (form) => {
  const bytes = new TextEncoder().encode(`${form.get("username")}:${form.get("password")}`);
  sessionStorage.setItem(AUTH_KEY, btoa(String.fromCharCode(...bytes)));
  try {
    await enter();
  } catch (err) {
    sessionStorage.removeItem(AUTH_KEY);
    throw err.status === 401 ? new Error("Login failed: wrong username or password, or not a management user") : err;
  }
});

onSubmit("declare-queue-form", async (form, node) => {
  const name = form.get("name");
  await api("PUT", `queues/${enc(vhost())}/${enc(name)}`, {durable: form.get("durable") === "on"});
  say(`Queue '${name}' declared`);
  node.reset();
  await refresh();
});

onSubmit("publish-form", async (form) => {
  const properties = {delivery_mode: Number(form.get("delivery_mode"))};
  if (form.get("content_type")) properties.content_type = form.get("content_type");
  if (form.get("headers").trim()) {
    let headers;
    try {
      headers = JSON.parse(form.get("headers"));
    } catch (err) {
      throw new Error("Headers are not valid JSON: " + err.message);
    }
    properties.headers = headers;
  }
  const exchange = form.get("exchange") || "amq.default";
  const result = await api("POST", `exchanges/${enc(vhost())}/${enc(exchange)}/publish`, {
    properties, routing_key: form.get("routing_key"), payload: form.get("payload"), payload_encoding: "string"});
  say(result.routed ? "Message published" : "Message published, but not routed to any queue", !result.routed);
});

onSubmit("get-form", async (form) => {
  const messages = await api("POST", `queues/${enc(vhost())}/${enc(form.get("queue"))}/get`, {
    count: Number(form.get("count")) || 1, ackmode: form.get("ackmode"), encoding: "auto"});
  say(messages.length ? `${messages.length} message(s)` : "Queue is empty");
  $("got").replaceChildren(...messages.map((m, i) => el("div", {class: "message"},
    el("h4", {}, `Message ${i + 1}`),
    el("dl", {},
      el("dt", {}, "Exchange"), el("dd", {}, m.exchange || "(AMQP default)"),
      el("dt", {}, "Routing key"), el("dd", {}, m.routing_key),
      el("dt", {}, "Redelivered"), el("dd", {}, m.redelivered ? "yes" : "no"),
      el("dt", {}, "Properties"), el("dd", {}, JSON.stringify(m.properties)),
      el("dt", {}, `Payload (${m.payload_bytes} bytes, ${m.payload_encoding})`),
      el("dd", {}, el("pre", {class: "payload"}, m.payload))))));
});

// --- login and start -----------------------------------------------------------------------------

async function enter() {
  const me = await api("GET", "whoami");
  const vhosts = await api("GET", "vhosts");
  const chosen = $("vhost").value || "/";
  $("vhost").replaceChildren(...vhosts.map((v) => el("option", {value: v.name}, v.name)));
  if (vhosts.some((v) => v.name === chosen)) $("vhost").value = chosen;
  $("user").textContent = `${me.name} (${me.tags.join(", ") || "no tags"})`;
  $("login-view").hidden = true;
  $("nav").hidden = $("who").hidden = false;
  say("");
  previous = {};
  await refresh();
  startPolling();
}

function logout(reason = "") {
  clearInterval(pollTimer);
  sessionStorage.removeItem(AUTH_KEY);
  for (const section of document.querySelectorAll(".view")) section.hidden = true;
  $("nav").hidden = $("who").hidden = true;
  $("login-view").hidden = false;
  say(reason, Boolean(reason));
}

$("logout").addEventListener("click", () => logout());
$("vhost").addEventListener("change", refresh);
window.addEventListener("hashchange", refresh);

if (sessionStorage.getItem(AUTH_KEY)) enter().catch(() => logout("Please log in"));
else logout();
