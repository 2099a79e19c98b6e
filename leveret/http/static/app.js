// Leveret's management page: plain JavaScript over the management API (/api/...), no build step.
// Credentials are kept in sessionStorage (this tab only) and sent as HTTP basic auth with every request;
// "#/login/<user>/<password>" in the URL logs in as RabbitMQ's page does (the URL is then cleaned).
"use strict";

const POLL_MS = 5000;
const AUTH_KEY = "leveret.auth";
const PAGE_STATE = "leveret.queues";
// queues the page hides unless "show internal queues" is ticked: RabbitMQ's own (amq.*), the task layer's
// status stream and retry wait queues, Celery's pidbox and event queues
const INTERNAL = "(?!amq\\.)(?!leveret\\.status$)(?!celeryev\\.)(?!.*\\.(?:retry\\.\\d+|pidbox)$)";
const $ = (id) => document.getElementById(id);
let pollTimer = null;
let refreshing = false;
let previous = {}; // counters of the last poll, for rates when the API gives none: key -> {t, value}
const queueList = Object.assign({page: 1, sort: "name", reverse: false},
                                JSON.parse(sessionStorage.getItem(PAGE_STATE) || "{}"));

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
const range = () => $("range").value.split(",");
const rangeQuery = () => {
  const [age, incr] = range();
  return `lengths_age=${age}&lengths_incr=${incr}&msg_rates_age=${age}&msg_rates_incr=${incr}`;
};

// --- small DOM helpers ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function button(label, onclick, cls) {
  return el("button", {type: "button", class: cls, onclick}, label);
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "ok";
}

function fail(err) {
  say(err instanceof ApiError ? `${err.status}: ${err.message}` : String(err.message || err), true);
}

function fill(tbody, rows, empty) {
  const columns = tbody.closest("table").querySelectorAll("thead th").length || 1;
  tbody.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", {colspan: columns, class: "empty"}, empty))]));
}

function table(tbody, pairs) {
  tbody.replaceChildren(...pairs.map(([k, v]) => el("tr", {}, el("th", {scope: "row"}, k),
    el("td", {}, v instanceof Node ? v : String(v ?? "")))));
}

const json = (value) => (value && Object.keys(value).length ? JSON.stringify(value) : "");
const yes = (value) => (value ? "yes" : "no");

function formatRate(value) {
  return value === undefined || value === null ? "–" : (Math.round(value * 10) / 10).toFixed(1);
}

function bytes(n) {
  if (n === undefined || n === null || n < 0) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// A byte rate from RabbitMQ's `<name>_details` ("1.2 KiB/s").
const traffic = (details) => (details && typeof details.rate === "number" ? `${bytes(details.rate)}/s` : "–");

function duration(ms) {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
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

function drawCharts(prefix, stats, lengths) {
  const details = (o, n) => ((o || {})[n + "_details"] || {}).samples;
  LeveretChart.draw($(prefix + "chart-rates"), [
    {label: "publish", color: "#c2410c", points: LeveretChart.rates(details(stats, "publish"))},
    {label: "deliver/get", color: "#2563eb", points: LeveretChart.rates(details(stats, "deliver_get"))},
    {label: "ack", color: "#15803d", points: LeveretChart.rates(details(stats, "ack"))},
    {label: "redeliver", color: "#9333ea", points: LeveretChart.rates(details(stats, "redeliver"))},
  ]);
  LeveretChart.draw($(prefix + "chart-lengths"), [
    {label: "ready", color: "#c2410c", points: LeveretChart.values(details(lengths, "messages_ready"))},
    {label: "unacked", color: "#2563eb", points: LeveretChart.values(details(lengths, "messages_unacknowledged"))},
  ]);
}

async function act(question, action, done) {
  if (question && !window.confirm(question)) return;
  try {
    await action();
    say(done);
    await refresh();
  } catch (err) {
    fail(err);
  }
}

// --- overview ------------------------------------------------------------------------------------

async function showOverview() {
  const [o, nodes] = await Promise.all([api("GET", "overview?" + rangeQuery()), api("GET", "nodes")]);
  $("node").textContent = `${o.product_name} ${o.product_version} on node ${o.node}`;
  $("rate-publish").textContent = formatRate(rate("overview", o.message_stats, "publish"));
  $("rate-deliver").textContent = formatRate(rate("overview", o.message_stats, "deliver_get"));
  $("rate-ack").textContent = formatRate(rate("overview", o.message_stats, "ack"));
  $("rate-redeliver").textContent = formatRate(rate("overview", o.message_stats, "redeliver"));
  drawCharts("", o.message_stats, o.queue_totals);
  table($("totals").tBodies[0], [
    ["Connections", o.object_totals.connections], ["Channels", o.object_totals.channels],
    ["Queues", o.object_totals.queues], ["Exchanges", o.object_totals.exchanges],
    ["Consumers", o.object_totals.consumers], ["Messages ready", o.queue_totals.messages_ready],
    ["Messages unacked", o.queue_totals.messages_unacknowledged],
  ]);
  const n = nodes[0] || {};
  const alarm = (on) => el("span", {class: on ? "bad" : "good"}, on ? "ALARM" : "ok");
  table($("health").tBodies[0], [
    ["Memory (RSS)", `${bytes(n.mem_used)} of ${bytes(n.mem_limit)} watermark`], ["Memory alarm", alarm(n.mem_alarm)],
    ["Disk alarm", alarm(n.disk_free_alarm)],
    ["File descriptors", n.fd_used === undefined ? "?" : `${n.fd_used} of ${n.fd_total}`],
    ["Uptime", n.uptime === undefined ? "?" : duration(n.uptime)], ["Process", n.os_pid],
  ]);
  fill($("listener-rows"), (o.listeners || []).map((l) => el("tr", {},
    el("td", {}, l.protocol), el("td", {}, l.ip_address), el("td", {}, l.port))), "No listeners");
}

// --- queues --------------------------------------------------------------------------------------

function queueQuery() {
  const form = $("queue-filter");
  const text = form.elements.name.value.trim();
  const regex = form.elements.regex.checked;
  const internal = form.elements.internal.checked;
  const params = new URLSearchParams({page: queueList.page, page_size: form.elements.page_size.value,
    sort: queueList.sort, sort_reverse: String(queueList.reverse),
    columns: "name,vhost,messages_ready,messages_unacknowledged,consumers,type,message_stats"});
  if (!internal) {
    const wanted = text ? `(?=.*(?:${regex ? text : text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}))` : "";
    params.set("name", "^" + INTERNAL + wanted);
    params.set("use_regex", "true");
  } else if (text) {
    params.set("name", text);
    params.set("use_regex", String(regex));
  }
  return params;
}

async function showQueues() {
  let result;
  try {
    result = await api("GET", `queues/${enc(vhost())}?${queueQuery()}`);
  } catch (err) {
    if (err.status === 400 && queueList.page > 1 && /out of range/.test(err.message)) {
      queueList.page = 1;
      return showQueues();
    }
    throw err;
  }
  for (const th of document.querySelectorAll("#queues th[data-sort]")) {
    const on = th.dataset.sort === queueList.sort;
    th.setAttribute("aria-sort", on ? (queueList.reverse ? "descending" : "ascending") : "none");
  }
  fill($("queue-rows"), result.items.map((q) => {
    const key = `queue/${q.vhost}/${q.name}`;
    const path = `${enc(q.vhost)}/${enc(q.name)}`;
    return el("tr", {"data-queue": q.name},
      el("td", {}, q.vhost), el("td", {class: "name"}, el("a", {href: `#queue/${path}`}, q.name)),
      el("td", {}, q.messages_ready), el("td", {}, q.messages_unacknowledged), el("td", {}, q.consumers),
      el("td", {}, q.type || ""),
      el("td", {}, formatRate(rate(key, q.message_stats, "publish"))),
      el("td", {}, formatRate(rate(key, q.message_stats, "deliver_get"))),
      el("td", {class: "actions"},
        button("Purge", () => act(`Purge queue '${q.name}'?`,
          () => api("DELETE", `queues/${path}/contents`), `Queue '${q.name}' purged`)),
        button("Delete", () => act(`Delete queue '${q.name}'?`,
          () => api("DELETE", `queues/${path}`), `Queue '${q.name}' deleted`), "danger")));
  }), result.total_count ? "No queue matches" : "No queues");
  const pager = $("queue-pager");
  const go = (page) => () => { queueList.page = page; saveQueueList(); refresh(); };
  pager.replaceChildren(
    el("span", {}, `${result.filtered_count} of ${result.total_count} queues · page ${result.page} of ` +
                   `${Math.max(result.page_count, 1)}`),
    el("button", {type: "button", disabled: result.page <= 1 ? "" : null, onclick: go(result.page - 1)}, "‹ Previous"),
    el("button", {type: "button", disabled: result.page >= result.page_count ? "" : null,
                  onclick: go(result.page + 1)}, "Next ›"));
}

function saveQueueList() {
  sessionStorage.setItem(PAGE_STATE, JSON.stringify(queueList));
}

function sortableHeaders() {
  for (const th of document.querySelectorAll("th[data-sort]")) {
    const label = th.textContent;
    th.replaceChildren(el("button", {type: "button", class: "sort", onclick: () => {
      queueList.reverse = queueList.sort === th.dataset.sort ? !queueList.reverse : false;
      queueList.sort = th.dataset.sort;
      queueList.page = 1;
      saveQueueList();
      refresh();
    }}, label));
  }
}

async function queueNames() {
  const result = await api("GET", `queues/${enc(vhost())}?page=1&page_size=500&columns=name`);
  $("queue-names").replaceChildren(...result.items.map((q) => el("option", {value: q.name})));
}

// --- one queue -----------------------------------------------------------------------------------

async function showQueue(vhostName, name) {
  const path = `${enc(vhostName)}/${enc(name)}`;
  const [q, bindings, consumers] = await Promise.all([
    api("GET", `queues/${path}?${rangeQuery()}`), api("GET", `queues/${path}/bindings`),
    api("GET", `consumers/${enc(vhostName)}`)]);
  $("queue-title").textContent = `${name} (vhost ${vhostName})`;
  drawCharts("queue-", q.message_stats, q);
  table($("queue-details").tBodies[0], [
    ["Type", q.type], ["State", q.state], ["Durable", yes(q.durable)], ["Auto-delete", yes(q.auto_delete)],
    ["Exclusive", yes(q.exclusive)], ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged],
    ["Ready bytes", bytes(q.message_bytes_ready)], ["Consumers", q.consumers],
    ["Arguments", json(q.arguments) || "none"], ["Policy", q.policy || "none"],
    ["Policy definition", json(q.effective_policy_definition) || "none"],
  ]);
  fill($("queue-consumer-rows"), consumers.filter((c) => c.queue.name === name).map((c) => el("tr", {},
    el("td", {class: "name"}, c.consumer_tag), el("td", {class: "name"}, c.channel_details.name),
    el("td", {}, yes(c.ack_required)), el("td", {}, yes(c.exclusive)), el("td", {}, c.prefetch_count))),
    "No consumers");
  fill($("queue-binding-rows"), bindings.map((b) => el("tr", {},
    el("td", {class: "name"}, b.source || "(AMQP default)"), el("td", {class: "name"}, b.routing_key),
    el("td", {}, json(b.arguments)),
    el("td", {class: "actions"}, b.source ? button("Unbind", () => act(null,
      () => api("DELETE", `bindings/${enc(vhostName)}/e/${enc(b.source)}/q/${enc(name)}/${enc(b.properties_key)}`),
      "Binding removed")) : ""))), "No bindings");
}

function currentQueue() {  // [vhost, name] of "#queue/<vhost>/<name>" (and "#task/<vhost>/<id>")
  const [, v, n] = location.hash.slice(1).split("/");
  return [decodeURIComponent(v || ""), decodeURIComponent(n || "")];
}

// --- exchanges and bindings ----------------------------------------------------------------------

async function exchangeNames() {
  const exchanges = await api("GET", `exchanges/${enc(vhost())}`);
  $("exchange-names").replaceChildren(...exchanges.filter((x) => x.name).map((x) => el("option", {value: x.name})));
  return exchanges;
}

async function showExchanges() {
  const exchanges = await exchangeNames();
  fill($("exchange-rows"), exchanges.map((x) => el("tr", {"data-exchange": x.name},
    el("td", {}, x.vhost), el("td", {class: "name"}, x.name || "(AMQP default)"), el("td", {}, x.type),
    el("td", {}, yes(x.durable)), el("td", {}, yes(x.internal)), el("td", {}, json(x.arguments)),
    el("td", {class: "actions"}, x.name && !x.name.startsWith("amq.") ? button("Delete", () => act(
      `Delete exchange '${x.name}'?`, () => api("DELETE", `exchanges/${enc(x.vhost)}/${enc(x.name)}`),
      `Exchange '${x.name}' deleted`), "danger") : ""))), "No exchanges");
}

async function showBindings() {
  await exchangeNames();
  const bindings = await api("GET", `bindings/${enc(vhost())}`);
  fill($("binding-rows"), bindings.map((b) => el("tr", {"data-binding": `${b.source}>${b.destination}`},
    el("td", {class: "name"}, b.source || "(AMQP default)"), el("td", {class: "name"}, b.destination),
    el("td", {}, b.destination_type), el("td", {class: "name"}, b.routing_key), el("td", {}, json(b.arguments)),
    el("td", {class: "actions"}, b.source ? button("Unbind", () => act(null, () => api("DELETE",
      `bindings/${enc(b.vhost)}/e/${enc(b.source)}/${b.destination_type === "queue" ? "q" : "e"}/` +
      `${enc(b.destination)}/${enc(b.properties_key)}`), "Binding removed")) : ""))), "No bindings");
}

// --- connections, channels, consumers ------------------------------------------------------------

async function showConnections() {
  const connections = (await api("GET", "connections?page=1&page_size=500&sort=name")).items;
  fill($("connection-rows"), connections.map((c) => {
    const client = c.client_properties || {};
    const product = [client.product, client.version].filter(Boolean).join(" ");
    return el("tr", {"data-connection": c.name},
      el("td", {class: "name"}, c.name), el("td", {}, client.connection_name || product || ""),
      el("td", {}, c.user), el("td", {}, c.vhost), el("td", {}, c.protocol),
      el("td", {}, c.ssl ? (c.ssl_protocol || "yes") : "no"), el("td", {}, c.channels), el("td", {}, c.state),
      el("td", {class: "num"}, traffic(c.recv_oct_details)), el("td", {class: "num"}, traffic(c.send_oct_details)),
      el("td", {class: "actions"}, button("Close", () => act(`Close connection ${c.name}?`,
        () => api("DELETE", `connections/${enc(c.name)}`, undefined, {"X-Reason": "Closed via management page"}),
        "Connection closed"), "danger")));
  }), "No connections");
}

async function showChannels() {
  const channels = (await api("GET", "channels?page=1&page_size=500&sort=name")).items;
  fill($("channel-rows"), channels.map((c) => el("tr", {"data-channel": c.name},
    el("td", {class: "name"}, c.name), el("td", {}, c.user), el("td", {}, c.vhost),
    el("td", {}, c.prefetch_count + (c.global_prefetch_count ? ` (global ${c.global_prefetch_count})` : "")),
    el("td", {}, c.messages_unacknowledged), el("td", {}, c.consumer_count),
    el("td", {}, [c.confirm && "confirm", c.transactional && "transactional"].filter(Boolean).join(", ") || "–"))),
  "No channels");
}

async function showConsumers() {
  const consumers = await api("GET", `consumers/${enc(vhost())}`);
  fill($("consumer-rows"), consumers.map((c) => el("tr", {"data-consumer": c.consumer_tag},
    el("td", {class: "name"}, el("a", {href: `#queue/${enc(c.queue.vhost)}/${enc(c.queue.name)}`}, c.queue.name)),
    el("td", {class: "name"}, c.consumer_tag), el("td", {class: "name"}, c.channel_details.name),
    el("td", {}, c.channel_details.user), el("td", {}, yes(c.ack_required)), el("td", {}, yes(c.exclusive)),
    el("td", {}, c.prefetch_count))), "No consumers");
}

// --- admin: users, permissions, vhosts, limits, policies -----------------------------------------

async function showAdmin() {
  const [users, permissions, vhosts, limits, policies, userLimits] = await Promise.allSettled([
    api("GET", "users"), api("GET", "permissions"), api("GET", "vhosts"), api("GET", "vhost-limits"),
    api("GET", `policies/${enc(vhost())}`), api("GET", "user-limits")]);
  const refused = (r) => `Not shown: ${r.reason && r.reason.message}`;
  const limitsOf = (list, key, name) => json(((list.value || []).find((l) => l[key] === name) || {}).value);
  fill($("user-rows"), users.status === "fulfilled" ? users.value.map((u) => el("tr", {"data-user": u.name},
    el("td", {class: "name"}, u.name), el("td", {}, u.tags.join(", ")), el("td", {}, limitsOf(userLimits, "user", u.name)),
    el("td", {class: "actions"}, button("Delete", () => act(`Delete user '${u.name}'?`,
      () => api("DELETE", `users/${enc(u.name)}`), `User '${u.name}' deleted`), "danger")))) : [],
  users.status === "fulfilled" ? "No users" : refused(users));
  fill($("permission-rows"), permissions.status === "fulfilled" ? permissions.value.map((p) => el("tr", {},
    el("td", {}, p.user), el("td", {}, p.vhost), el("td", {class: "name"}, p.configure),
    el("td", {class: "name"}, p.write), el("td", {class: "name"}, p.read),
    el("td", {class: "actions"}, button("Clear", () => act(`Clear ${p.user}'s permissions in ${p.vhost}?`,
      () => api("DELETE", `permissions/${enc(p.vhost)}/${enc(p.user)}`), "Permissions cleared"), "danger")))) : [],
  permissions.status === "fulfilled" ? "No permissions" : refused(permissions));
  fill($("vhost-rows"), vhosts.status === "fulfilled" ? vhosts.value.map((v) => el("tr", {"data-vhost": v.name},
    el("td", {class: "name"}, v.name), el("td", {}, v.messages), el("td", {}, yes(v.tracing)),
    el("td", {}, limitsOf(limits, "vhost", v.name)),
    el("td", {class: "actions"}, button("Delete", () => act(`Delete vhost '${v.name}' and everything in it?`,
      () => api("DELETE", `vhosts/${enc(v.name)}`), `Vhost '${v.name}' deleted`), "danger")))) : [],
  vhosts.status === "fulfilled" ? "No vhosts" : refused(vhosts));
  fill($("policy-rows"), policies.status === "fulfilled" ? policies.value.map((p) => el("tr", {"data-policy": p.name},
    el("td", {}, p.vhost), el("td", {class: "name"}, p.name), el("td", {class: "name"}, p.pattern),
    el("td", {}, p["apply-to"]), el("td", {}, json(p.definition)), el("td", {}, p.priority),
    el("td", {class: "actions"}, button("Delete", () => act(`Delete policy '${p.name}'?`,
      () => api("DELETE", `policies/${enc(p.vhost)}/${enc(p.name)}`), `Policy '${p.name}' deleted`), "danger")))) : [],
  policies.status === "fulfilled" ? "No policies" : refused(policies));
}

// --- tasks (the status book) and one task ---------------------------------------------------------

const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "");

async function showTasks() {
  const state = $("task-filter").elements.state.value;
  const [tasks, dead, consumers] = await Promise.all([
    api("GET", `tasks/${enc(vhost())}?limit=200${state ? "&state=" + enc(state) : ""}`),
    api("GET", `queues/${enc(vhost())}?page=1&page_size=100&use_regex=true&name=${enc("\\.dead$")}` +
               "&columns=name,vhost,messages"),
    api("GET", `consumers/${enc(vhost())}`)]);
  // task queues: those of the listed tasks and those with a dead-letter queue beside them
  const taskQueues = new Set([...tasks.map((t) => t.queue), ...dead.items.map((q) => q.name.slice(0, -5))]);
  const workers = new Map();
  for (const c of consumers.filter((c) => taskQueues.has(c.queue.name))) {
    const key = c.channel_details.connection_name;
    const w = workers.get(key) || {user: c.channel_details.user, queues: new Set(), consumers: 0, prefetch: 0};
    w.queues.add(c.queue.name);
    w.consumers += 1;
    w.prefetch += c.prefetch_count || 0;
    workers.set(key, w);
  }
  fill($("worker-rows"), [...workers].map(([name, w]) => el("tr", {"data-worker": name},
    el("td", {class: "name"}, name), el("td", {}, w.user), el("td", {}, [...w.queues].sort().join(", ")),
    el("td", {}, w.consumers), el("td", {}, w.prefetch || "unlimited"))), "No worker is consuming");
  fill($("task-rows"), tasks.map((t) => el("tr", {"data-task": t.id, "data-state": t.state},
    el("td", {class: "name"}, el("a", {href: `#task/${enc(vhost())}/${enc(t.id)}`}, t.id)), el("td", {}, t.task),
    el("td", {}, t.queue), el("td", {class: `state-${t.state}`}, t.state), el("td", {}, t.attempt),
    el("td", {}, when(t.updated)), el("td", {}, when(t.next_attempt_at)),
    el("td", {}, t.error ? `${t.error.type || "error"}: ${t.error.message || ""}` : ""),
    el("td", {class: "actions"}, canRetryNow(t) ? button("Retry now", () => retryNowClicked(vhost(), t)) : ""))),
  state ? `No ${state} tasks` : "No tasks recorded since the broker started");
  fill($("dead-rows"), dead.items.map((q) => el("tr", {"data-dead": q.name},
    el("td", {class: "name"}, el("a", {href: `#queue/${enc(q.vhost)}/${enc(q.name)}`}, q.name)),
    el("td", {}, q.messages),
    el("td", {class: "actions"}, button("Replay", () => replayDead(q.vhost, q.name))))),
  "No dead-letter queues");
}

async function showTask(vhostName, id) {
  $("task-title").textContent = id;
  const [status, timeline] = await Promise.allSettled([
    api("GET", `task-status/${enc(vhostName)}/${enc(id)}`), api("GET", `tracking/${enc(vhostName)}/${enc(id)}`)]);
  $("task-revoke").hidden = status.status === "rejected" || FINAL.has(status.value.state);
  shownTask = status.status === "fulfilled" ? status.value : null;
  $("task-retry-now").hidden = !canRetryNow(shownTask);
  if (status.status === "rejected") {
    table($("task-details").tBodies[0], [["Status", status.reason.message]]);
    $("task-error").replaceChildren();
  } else {
    const t = status.value;
    table($("task-details").tBodies[0], [
      ["Task", t.task], ["Queue", t.queue], ["State", t.state], ["Attempt", t.attempt], ["Created", when(t.created)],
      ["Started", when(t.started)], ["Updated", when(t.updated)], ["Finished", when(t.finished)],
      ["Next attempt", when(t.next_attempt_at)], ["Worker", t.worker || ""], ["Expires", when(t.expires)],
      ["Result", t.result === undefined ? "" : JSON.stringify(t.result)]]);
    $("task-error").replaceChildren(...(t.error ? [el("div", {class: "message"},
      el("h4", {}, `${t.error.type || "Error"}: ${t.error.message || ""}`),
      el("pre", {class: "payload traceback"}, t.error.traceback || "(no traceback)"))] : []));
  }
  fill($("task-timeline"), timeline.status === "fulfilled" ? timeline.value.map(eventRow) : [],
    timeline.status === "fulfilled" ? "No events" : `No timeline: ${timeline.reason.message}`);
}

// Revoke as leveret.tasks' App.revoke does, through the API's publish: the control message every worker hears
// (it skips the task, or interrupts it if it runs) and the "revoked" event for the status book.
const FINAL = new Set(["succeeded", "gave_up", "revoked"]);

async function revokeTask(vhostName, id) {
  const t = await api("GET", `task-status/${enc(vhostName)}/${enc(id)}`);
  const json = {content_type: "application/json"};
  const now = Date.now() / 1000;
  await api("POST", `exchanges/${enc(vhostName)}/leveret.control/publish`, {routing_key: "",
    payload: JSON.stringify({revoke: id, ts: now}), payload_encoding: "string",
    properties: {...json, delivery_mode: 2}});
  await api("POST", `exchanges/${enc(vhostName)}/leveret.events/publish`, {routing_key: `${t.task || "unknown"}.revoked`,
    payload: JSON.stringify({id, task: t.task, queue: t.queue, state: "revoked", attempt: t.attempt, ts: now,
                             ttl: Math.max(60, Math.round(t.expires - now))}),
    payload_encoding: "string", properties: {...json, delivery_mode: 1, message_id: id}});
}

$("task-revoke").addEventListener("click", () => {
  const [v, id] = currentQueue();
  act(`Revoke task ${id}? Workers skip it, or interrupt it if it runs.`, () => revokeTask(v, id),
      `Task ${id} revoked`);
});

// Retry now: a task waiting for its next attempt (state retrying) is released at once from the broker's retry
// wait (Leveret's queue action retry_now, by the task's id, which is its message id; docs/management.md).
let shownTask = null;
const canRetryNow = (t) => Boolean(t && t.state === "retrying" && t.queue && t.id);

async function retryNowClicked(vhostName, t) {
  await act(null, () => api("POST", `queues/${enc(vhostName)}/${enc(t.queue)}/actions`,
                            {action: "retry_now", message_id: t.id}),
            `Task ${t.id} released: its next attempt runs now`);
}

$("task-retry-now").addEventListener("click", () => {
  const [v] = currentQueue();
  if (canRetryNow(shownTask)) retryNowClicked(v, shownTask);
});

// one message-tracking event as a table row: time, event, and its other fields
function eventRow(e) {
  const {time, timestamp, event, ...rest} = e;
  return el("tr", {"data-event": event}, el("td", {}, time), el("td", {}, event),
    el("td", {class: "name"}, Object.entries(rest).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(" · ")));
}

// --- views and polling ---------------------------------------------------------------------------

const VIEWS = {overview: showOverview, queues: showQueues, queue: () => showQueue(...currentQueue()),
               exchanges: showExchanges, bindings: showBindings, connections: showConnections,
               channels: showChannels, consumers: showConsumers, admin: showAdmin, tracking: async () => {},
               tasks: showTasks, task: () => showTask(...currentQueue()),
               publish: exchangeNames, get: queueNames};
const LIVE = new Set(["overview", "queues", "queue", "connections", "channels", "consumers", "tasks", "task"]);

function currentView() {
  const name = location.hash.slice(1).split("/")[0];
  return name in VIEWS ? name : "overview";
}

async function refresh() {
  const name = currentView();
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== name;
  for (const link of document.querySelectorAll("#nav a")) {
    const here = link.getAttribute("href") === "#" + ({queue: "queues", task: "tasks"}[name] || name);
    link.classList.toggle("current", here);
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  refreshing = true;
  try {
    await VIEWS[name]();
  } catch (err) {
    fail(err);
  } finally {
    refreshing = false;
  }
}

function startPolling() {
  clearInterval(pollTimer);
  pollTimer = setInterval(() => {
    if ($("live").checked && !refreshing && !document.hidden && LIVE.has(currentView())) refresh();
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

function parseJson(text, what) {
  if (!text.trim()) return {};
  try {
    const value = JSON.parse(text);
    if (typeof value !== "object" || Array.isArray(value) || value === null) throw new Error("not an object");
    return value;
  } catch (err) {
    throw new Error(`${what} is not a JSON object: ${err.message}`);
  }
}

function storeCredentials(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  sessionStorage.setItem(AUTH_KEY, btoa(String.fromCharCode(...bytes)));
}

onSubmit("login-form", async (form) => {
  storeCredentials(form.get("username"), form.get("password"));
  try {
    await enter();
  } catch (err) {
    sessionStorage.removeItem(AUTH_KEY);
    throw err.status === 401 ? new Error("Login failed: wrong username or password, or not a management user") : err;
  }
});

onSubmit("declare-queue-form", async (form, node) => {
  const name = form.get("name");
  const args = parseJson(form.get("arguments"), "Arguments");
  if (form.get("type") === "quorum") args["x-queue-type"] = "quorum";
  await api("PUT", `queues/${enc(vhost())}/${enc(name)}`, {durable: form.get("durable") === "on", arguments: args});
  say(`Queue '${name}' declared`);
  node.reset();
  await refresh();
});

onSubmit("declare-exchange-form", async (form, node) => {
  const name = form.get("name");
  await api("PUT", `exchanges/${enc(vhost())}/${enc(name)}`, {type: form.get("type"),
    durable: form.get("durable") === "on"});
  say(`Exchange '${name}' declared`);
  node.reset();
  await refresh();
});

onSubmit("binding-form", async (form) => {
  await api("POST", `bindings/${enc(vhost())}/e/${enc(form.get("source"))}/${form.get("kind")}/` +
                    `${enc(form.get("destination"))}`, {routing_key: form.get("routing_key"), arguments: {}});
  say("Binding added");
  await refresh();
});

onSubmit("queue-bind-form", async (form) => {
  const [v, n] = currentQueue();
  await api("POST", `bindings/${enc(v)}/e/${enc(form.get("source"))}/q/${enc(n)}`,
            {routing_key: form.get("routing_key"), arguments: {}});
  say("Binding added");
  await refresh();
});

onSubmit("queue-get-form", async (form) => {
  const [v, n] = currentQueue();
  await getMessages(v, n, form, $("queue-got"));
  await refresh();
});

// Leveret's queue actions (docs/management.md, "Moving messages and replaying dead letters"): server-side moves
async function queueAction(vhostName, queue, body) {
  const result = await api("POST", `queues/${enc(vhostName)}/${enc(queue)}/actions`, body);
  return `${result.moved} message(s) moved, ${result.left} left in '${queue}'`;
}

$("queue-move-form").querySelector("[name=destination]").addEventListener("focus", () => queueNames().catch(fail));

onSubmit("queue-move-form", async (form, node) => {
  const [v, n] = currentQueue();
  const destination = form.get("destination");
  const body = {action: "move", destination};
  if (form.get("count")) body.count = Number(form.get("count"));
  const count = body.count === undefined ? "all ready messages" : `${body.count} message(s)`;
  if (!window.confirm(`Move ${count} of '${n}' to '${destination}'?`)) return;
  say(await queueAction(v, n, body));
  node.reset();
  await refresh();
});

async function replayDead(vhostName, queue) {
  if (!window.confirm(`Send the dead letters of '${queue}' back to the queues they came from?`)) return;
  try {
    say(await queueAction(vhostName, queue, {action: "replay_dead_letters"}));
    await refresh();
  } catch (err) {
    fail(err);
  }
}

$("queue-replay").addEventListener("click", () => replayDead(...currentQueue()));

$("queue-purge").addEventListener("click", () => {
  const [v, n] = currentQueue();
  act(`Purge queue '${n}'?`, () => api("DELETE", `queues/${enc(v)}/${enc(n)}/contents`), `Queue '${n}' purged`);
});

$("queue-delete").addEventListener("click", () => {
  const [v, n] = currentQueue();
  act(`Delete queue '${n}'?`, async () => {
    await api("DELETE", `queues/${enc(v)}/${enc(n)}`);
    location.hash = "#queues";
  }, `Queue '${n}' deleted`);
});

onSubmit("user-form", async (form, node) => {
  const name = form.get("name");
  await api("PUT", `users/${enc(name)}`, {password: form.get("password"), tags: form.get("tags")});
  say(`User '${name}' saved`);
  node.reset();
  await refresh();
});

onSubmit("permission-form", async (form) => {
  await api("PUT", `permissions/${enc(vhost())}/${enc(form.get("user"))}`,
            {configure: form.get("configure"), write: form.get("write"), read: form.get("read")});
  say(`Permissions of '${form.get("user")}' in '${vhost()}' set`);
  await refresh();
});

onSubmit("vhost-form", async (form, node) => {
  await api("PUT", `vhosts/${enc(form.get("name"))}`, {});
  say(`Vhost '${form.get("name")}' added`);
  node.reset();
  await enter();
});

onSubmit("limit-form", async (form) => {
  await api("PUT", `vhost-limits/${enc(vhost())}/${enc(form.get("name"))}`, {value: Number(form.get("value"))});
  say(`Limit ${form.get("name")} of '${vhost()}' set`);
  await refresh();
});

onSubmit("policy-form", async (form, node) => {
  const name = form.get("name");
  await api("PUT", `policies/${enc(vhost())}/${enc(name)}`, {pattern: form.get("pattern"),
    "apply-to": form.get("apply-to"), definition: parseJson(form.get("definition"), "Definition"),
    priority: Number(form.get("priority")) || 0});
  say(`Policy '${name}' set`);
  node.reset();
  await refresh();
});

$("definitions-export").addEventListener("click", async () => {
  try {
    const definitions = await api("GET", "definitions");
    const link = el("a", {href: URL.createObjectURL(new Blob([JSON.stringify(definitions, null, 2)],
      {type: "application/json"})), download: "leveret-definitions.json"});
    document.body.append(link);
    link.click();
    link.remove();
    say("Definitions exported");
  } catch (err) {
    fail(err);
  }
});

$("definitions-import").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    await api("POST", "definitions", parseJson(await file.text(), "The definitions file"));
    say(`Definitions imported from ${file.name}`);
    await refresh();
  } catch (err) {
    fail(err);
  } finally {
    event.target.value = "";
  }
});

onSubmit("tracking-form", async (form) => {
  const id = form.get("message_id").trim();
  let events;
  try {
    events = await api("GET", `tracking/${enc(vhost())}/${enc(id)}`);
  } catch (err) {
    $("tracking-rows").replaceChildren();
    throw err;
  }
  say(`${events.length} event(s) for message '${id}'`);
  fill($("tracking-rows"), events.map(eventRow), "No events");
});

$("task-filter").elements.state.addEventListener("change", refresh);
onSubmit("task-filter", async (form) => {
  const id = form.get("id").trim();
  if (id) location.hash = `#task/${enc(vhost())}/${enc(id)}`;
  else await refresh();
});

$("queue-filter").addEventListener("input", () => {
  queueList.page = 1;
  saveQueueList();
  refresh();
});
$("queue-filter").addEventListener("submit", (event) => event.preventDefault());
$("range").addEventListener("change", refresh);

onSubmit("publish-form", async (form) => {
  const properties = {delivery_mode: Number(form.get("delivery_mode"))};
  if (form.get("content_type")) properties.content_type = form.get("content_type");
  if (form.get("message_id")) properties.message_id = form.get("message_id");
  if (form.get("headers").trim()) properties.headers = parseJson(form.get("headers"), "Headers");
  const exchange = form.get("exchange") || "amq.default";
  const result = await api("POST", `exchanges/${enc(vhost())}/${enc(exchange)}/publish`, {
    properties, routing_key: form.get("routing_key"), payload: form.get("payload"), payload_encoding: "string"});
  say(result.routed ? "Message published" : "Message published, but not routed to any queue", !result.routed);
});

async function getMessages(vhostName, queue, form, target) {
  const messages = await api("POST", `queues/${enc(vhostName)}/${enc(queue)}/get`, {
    count: Number(form.get("count")) || 1, ackmode: form.get("ackmode"), encoding: "auto"});
  say(messages.length ? `${messages.length} message(s)` : "Queue is empty");
  target.replaceChildren(...messages.map((m, i) => el("div", {class: "message"},
    el("h4", {}, `Message ${i + 1}`),
    el("dl", {},
      el("dt", {}, "Exchange"), el("dd", {}, m.exchange || "(AMQP default)"),
      el("dt", {}, "Routing key"), el("dd", {}, m.routing_key),
      el("dt", {}, "Redelivered"), el("dd", {}, yes(m.redelivered)),
      el("dt", {}, "Properties"), el("dd", {}, JSON.stringify(m.properties)),
      el("dt", {}, `Payload (${m.payload_bytes} bytes, ${m.payload_encoding})`),
      el("dd", {}, el("pre", {class: "payload"}, m.payload))))));
}

onSubmit("get-form", (form) => getMessages(vhost(), form.get("queue"), form, $("got")));

// --- login and start -----------------------------------------------------------------------------

async function enter() {
  const me = await api("GET", "whoami");
  const vhosts = await api("GET", "vhosts");
  const chosen = $("vhost").value || sessionStorage.getItem("leveret.vhost") || "/";
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

// "#/login/<user>/<password>" as RabbitMQ's page: log in, then drop the credentials from the URL and history
function loginFromUrl() {
  const match = /^#\/login\/([^/]*)\/(.*)$/.exec(location.hash);
  if (!match) return false;
  storeCredentials(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
  history.replaceState(null, "", location.pathname + location.search + "#overview");
  return true;
}

sortableHeaders();
$("logout").addEventListener("click", () => logout());
$("vhost").addEventListener("change", () => {
  sessionStorage.setItem("leveret.vhost", vhost());
  queueList.page = 1;
  refresh();
});
window.addEventListener("hashchange", () => {
  if (loginFromUrl()) enter().catch(() => logout("Login failed: wrong username or password"));
  else if (sessionStorage.getItem(AUTH_KEY)) refresh();
});

if (loginFromUrl()) enter().catch(() => logout("Login failed: wrong username or password"));
else if (sessionStorage.getItem(AUTH_KEY)) enter().catch(() => logout("Please log in"));
else logout();
