// The usage dashboard: reads the native API with the key kept in sessionStorage (never in a URL).
"use strict";

const KEY_STORE = "usage-metering.api-key";
const PAGE_SIZE = 20;
const HOURLY_UP_TO_DAYS = 2;
// Okabe-Ito hues (told apart with colour blindness), darkened where needed for 3:1 contrast on white.
const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#A6761D", "#666666"];
// The API's base: this page is `<base>dashboard`, so `<base>v1/...` (works under an API Gateway stage prefix too).
const BASE = location.pathname.replace(/dashboard\/?$/, "");

const $ = (id) => document.getElementById(id);
// `asked` numbers requests per section, so an answer that arrives after a newer request is dropped.
const state = { meters: {}, lines: {}, cursors: [null], shown: [], charts: [], period: null, asked: { period: 0, events: 0 } };

class ApiError extends Error {
  constructor(status, body, headers) {
    const detail = (body && body.error) || {};
    super(detail.message || `HTTP ${status}`);
    this.status = status;
    this.code = detail.code || "";
    this.requestId = detail.request_id || headers.get("X-Request-Id") || "";
    this.retryAfter = headers.get("Retry-After");
  }
}

// JSON numbers are kept as their exact text (quantities and money are decimals), where the browser gives it.
function exact(key, value, context) {
  if (typeof value !== "number") return value;
  return context && typeof context.source === "string" ? context.source : String(value);
}

async function api(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null));
  const url = BASE + path + (query.toString() ? "?" + query : "");
  const response = await fetch(url, {
    headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY_STORE), Accept: "application/json" },
    cache: "no-store",
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text, exact) : null; } catch (_) { body = null; }
  if (!response.ok) throw new ApiError(response.status, body, response.headers);
  return body;
}

// -- formatting ----------------------------------------------------------------------------------

function decimal(text) {
  // Group the integer part of an exact decimal text: "1234567.125" -> "1,234,567.125".
  const [whole, fraction] = String(text).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const grouped = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return sign + grouped + (fraction !== undefined ? "." + fraction : "");
}
const money = (amount, currency) => `${decimal(amount)} ${currency}`;
const COMPACT = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 2 });
const compact = (n) => COMPACT.format(n); // axis ticks only: 3,000,000 -> 3M
const isoDay = (d) => d.toISOString().slice(0, 10);
const daysBetween = (from, to) => Math.round((Date.parse(to) - Date.parse(from)) / 86400000) + 1;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function table(caption, headers, rows, numeric = []) {
  const head = el("tr", {}, ...headers.map((h, i) => el("th", { scope: "col", class: numeric.includes(i) ? "num" : "", text: h })));
  const body = rows.map((cells) => el("tr", {}, ...cells.map((c, i) => el("td", { class: numeric.includes(i) ? "num" : "" }, c))));
  return el("div", { class: "table-wrap" }, el("table", {}, el("caption", { text: caption }), el("thead", {}, head), el("tbody", {}, ...body)));
}

// -- states ---------------------------------------------------------------------------------------

function say(text) { $("status").textContent = text; }

function showError(error) {
  const box = $("error");
  box.hidden = false;
  if (error.status === 401) {
    box.textContent = "This API key was refused: it is unknown or has been revoked. Sign in with another key.";
    signOut(false);
  } else if (error.status === 429) {
    const wait = Number(error.retryAfter);
    const when = wait > 120 ? ` after ${new Date(Date.now() + wait * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`
      : ` in ${wait || 1} s`;
    box.textContent = `Too many requests: ${error.message} Try again${when} (Retry-After: ${error.retryAfter || "?"}).`;
  } else if (error.status === 403) {
    box.textContent = `Not allowed with this key: ${error.message}`;
  } else if (error instanceof ApiError) {
    box.textContent = `The service answered ${error.status} ${error.code}: ${error.message}` +
      (error.requestId ? ` (request ${error.requestId})` : "");
  } else {
    box.textContent = "The service could not be reached. Check that it is running, then try again.";
  }
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

function busy(section, on) {
  $(section).setAttribute("aria-busy", on ? "true" : "false");
  $(section).classList.toggle("loading", on);
}

// -- sign in and out -----------------------------------------------------------------------------

function signOut(clearMessage = true) {
  sessionStorage.removeItem(KEY_STORE);
  state.charts.forEach((c) => c.destroy());
  state.charts = [];
  $("app").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("api-key").value = "";
  if (clearMessage) clearError();
  say("Signed out.");
  $("api-key").focus();
}

async function signIn(key) {
  sessionStorage.setItem(KEY_STORE, key);
  clearError();
  say("Loading…");
  try {
    const [limits, meters, lines] = await Promise.all([
      api("v1/organization/limits"), api("v1/meters"), api("v1/service-lines"),
    ]);
    state.meters = Object.fromEntries(meters.data.map((m) => [m.id, m]));
    state.lines = Object.fromEntries(lines.data.map((l) => [l.id, l]));
    renderWho(limits.data);
    renderLimits(limits.data);
    fillFilters();
    $("sign-in").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    await loadPeriod();
  } catch (error) {
    if (error.status === 401 || error.status === 403) signOut(false); // a key that cannot read usage is forgotten
    showError(error);
    say("");
  }
}

function renderWho(limits) {
  const who = $("who");
  who.replaceChildren(
    el("span", { text: `${limits.organization_id} · ${limits.plan.name} · key ${limits.key.id}` }),
    ...(limits.key.read_only ? [" ", el("span", { class: "badge", id: "read-only", text: "Read-only key",
      title: "This key can read usage and the catalog; it cannot send events or change service lines." })] : []),
  );
  who.hidden = false;
}

// -- period: summary, charts, events -------------------------------------------------------------

function setPeriod(days) {
  const to = new Date();
  const from = new Date(to.getTime() - (days - 1) * 86400000);
  $("from").value = isoDay(from);
  $("to").value = isoDay(to);
}

async function loadPeriod() {
  const from = $("from").value, to = $("to").value;
  if (!from || !to || from > to) { showError(new Error("Choose a start date on or before the end date.")); return; }
  clearError();
  state.period = { from, to };
  $("ev-from").value = from;
  $("ev-to").value = to;
  say(`Loading ${from} to ${to}…`);
  ["summary", "charts"].forEach((s) => busy(s, true));
  const ticket = ++state.asked.period;
  try {
    const granularity = daysBetween(from, to) <= HOURLY_UP_TO_DAYS ? "hour" : "day";
    const [summary, series] = await Promise.all([
      api("v1/usage/summary", { from, to }), api("v1/usage/timeseries", { from, to, granularity }),
    ]);
    if (ticket !== state.asked.period) return; // a newer period was asked for meanwhile
    renderSummary(summary.data);
    renderCharts(series.data);
    await loadEvents(true);
    say(`Showing ${from} to ${to} (UTC).`);
  } catch (error) {
    showError(error);
    say("");
  } finally {
    ["summary", "charts"].forEach((s) => busy(s, false));
  }
}

const aggregationOf = (meter) => (state.meters[meter] && state.meters[meter].aggregation) || "sum";

function renderSummary(summary) {
  $("total-cost").textContent = money(summary.total_cost_estimate, summary.currency);
  const body = $("summary-body");
  const used = summary.by_service_line.filter((line) => line.meters.length > 0);
  if (used.length === 0) {
    body.replaceChildren(el("p", { class: "empty", text: "No usage in this period." }));
    return;
  }
  body.replaceChildren(el("div", { class: "summary-lines" }, ...used.map((line) => el("div", { class: "line" },
    el("h3", { text: `${line.name} (${line.service_line_id})` }),
    el("p", { class: "line-cost" }, "Cost estimate: ",
      el("strong", { "data-cost": line.service_line_id, text: money(line.cost_estimate, line.currency) }),
      ` · ${line.product_line}` + (line.restated_at ? ` · restated ${line.restated_at} after corrections` : "")),
    table(`Usage of ${line.service_line_id}`, ["Meter", "Aggregation", "Quantity", "Unit", "Of which corrections"],
      line.meters.map((m) => [m.meter, m.aggregation || aggregationOf(m.meter),
        el("span", { "data-quantity": `${line.service_line_id}/${m.meter}`, text: decimal(m.quantity) }), m.unit,
        m.adjusted != null ? decimal(m.adjusted) : m.restated_at ? "recomputed" : ""]),
      [2, 4]),
  ))));
}

function renderCharts(series) {
  state.charts.forEach((c) => c.destroy());
  state.charts = [];
  const body = $("charts-body");
  if (series.series.length === 0) {
    body.replaceChildren(el("p", { class: "empty", text: "No usage to chart in this period." }));
    return;
  }
  const hourly = series.granularity === "hour";
  const xs = series.buckets.map((b) => Date.parse(hourly ? b : b + "T00:00:00Z") / 1000);
  body.replaceChildren();
  series.series.forEach((s, i) => {
    const name = state.lines[s.service_line_id] ? state.lines[s.service_line_id].name : s.service_line_id;
    const title = `${name}: ${s.meter} (${s.unit}, ${s.aggregation}), ${hourly ? "hourly" : "daily"}`;
    const plot = el("div", { class: "plot", role: "img", "aria-label": title });
    const data = el("details", {}, el("summary", { text: "Data table" }),
      table(title, [hourly ? "Hour (UTC)" : "Day", s.unit || "Quantity"],
        series.buckets.map((b, k) => [b, decimal(s.values[k])]), [1]));
    const figure = el("figure", { class: "chart", "data-series": `${s.service_line_id}/${s.meter}` },
      el("figcaption", { text: title }), plot, data);
    body.append(figure);
    if (typeof uPlot === "undefined") return; // the table above still shows the numbers
    const colour = COLOURS[i % COLOURS.length];
    state.charts.push(new uPlot({
      width: Math.max(260, plot.clientWidth), height: 180,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      legend: { show: false },
      scales: { y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } }, // bars start at 0
      series: [{}, { label: s.meter, stroke: colour, fill: colour + "33", width: 2, points: { show: false },
        paths: uPlot.paths.bars({ size: [0.7, 40] }) }],
      axes: [{}, { label: s.unit, size: 64, values: (u, ticks) => ticks.map(compact) }],
    }, [xs, s.values.map(Number)], plot));
  });
}

function resizeCharts() {
  for (const chart of state.charts) chart.setSize({ width: Math.max(260, chart.root.parentNode.clientWidth), height: 180 });
}

// -- plan and limits -----------------------------------------------------------------------------

function allowance(label, value, id, uncapped = "no limit") {
  const limit = value.limit;
  const capped = limit !== null && limit !== "custom";
  const text = capped ? `${decimal(value.used)} of ${decimal(limit)}` :
    limit === "custom" ? `${decimal(value.used)} (custom limit, by contract)` : uncapped.replace("{used}", decimal(value.used));
  const row = el("div", { class: "allowance", id },
    el("span", { class: "label", text: label }), el("span", { class: "value", text }));
  if (capped) {
    row.append(el("meter", { min: "0", max: String(limit), value: String(value.used), high: String(0.8 * Number(limit)),
      "aria-label": `${label}: ${text}` }));
  }
  return row;
}

function renderLimits(limits) {
  const rows = [
    el("p", { text: `Plan ${limits.plan.name} (${limits.plan.id}); monthly counts for ${limits.month}, reset ${limits.resets_at}.` }),
    allowance("Active service lines", limits.active_service_lines, "limit-lines", "{used} (no limit)"),
    allowance("Workspaces", limits.workspaces, "limit-workspaces", "{used} (no limit)"),
    allowance("API calls this month", limits.api_calls, "limit-api-calls", "no limit (not counted)"),
  ];
  if (limits.agent_credits) {
    rows.push(allowance("Agent credits this month", limits.agent_credits, "limit-credits", "{used} (no limit)"));
  }
  else rows.push(el("p", { class: "hint", text: "This plan has no agent credits." }));
  if (limits.key.read_only) {
    rows.push(el("p", { class: "hint", text: "Read-only key: it can read usage and the catalog, not send events or change service lines." }));
  }
  $("limits-body").replaceChildren(...rows);
}

// -- events --------------------------------------------------------------------------------------

function fillFilters() {
  const options = (select, values) => select.replaceChildren(el("option", { value: "", text: "All" }),
    ...values.map(([value, text]) => el("option", { value, text })));
  options($("ev-line"), Object.values(state.lines).map((l) => [l.id, `${l.name} (${l.id})`]));
  options($("ev-meter"), Object.keys(state.meters).sort().map((m) => [m, m]));
}

// Corrections: a voided or adjusted event, and the void or adjustment that corrects it.
function marksOf(e) {
  const marks = [];
  if (e.voided_by) marks.push("voided");
  if (e.adjusted_by && e.adjusted_by.length) marks.push("adjusted");
  if (e.kind) marks.push(`${e.kind} of ${e.corrects}`);
  return marks;
}

async function loadEvents(reset) {
  if (reset) state.cursors = [null];
  const page = state.cursors.length - 1;
  busy("events", true);
  const ticket = ++state.asked.events;
  try {
    const answer = await api("v1/usage", {
      service_line_id: $("ev-line").value, meter: $("ev-meter").value,
      from: $("ev-from").value, to: $("ev-to").value, limit: PAGE_SIZE, cursor: state.cursors[page],
      hide_voided: $("ev-hide-voided").checked ? "true" : "",
    });
    if (ticket !== state.asked.events) return; // a newer filter or page was asked for meanwhile
    state.shown = answer.data;
    state.next = answer.meta.cursor;
    renderEvents(page);
  } finally {
    busy("events", false);
  }
}

function renderEvents(page) {
  const rows = state.shown.map((e) => {
    const marks = marksOf(e);
    const row = el("tr", { "data-event": e.id, class: marks.includes("voided") ? "voided" : "" },
      el("td", { text: e.period_date }), el("td", { text: e.service_line_id }), el("td", { text: e.meter }),
      el("td", { class: "num", text: `${decimal(e.quantity)} ${e.unit}` }),
      el("td", { title: e.reason || "" }, ...marks.map((m) => el("span", { class: "mark", text: m }))),
      el("td", { text: e.id }), el("td", { text: e.recorded_at }), el("td", { text: e.source }));
    return row;
  });
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: "8", class: "empty", text: "No events match these filters." })));
  }
  $("events-body").replaceChildren(...rows);
  $("page-info").textContent = `Page ${page + 1}` + (state.shown.length ? ` (${state.shown.length} events)` : "");
  $("prev").disabled = page === 0;
  $("next").disabled = !state.next;
}

function csvCell(value) {
  const text = value == null ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv() {
  const columns = ["id", "service_line_id", "meter", "quantity", "unit", "period_date", "recorded_at", "source", "marks",
    "corrects", "reason", "metadata"];
  const lines = [columns.join(",")].concat(state.shown.map((e) =>
    columns.map((c) => csvCell(c === "marks" ? marksOf(e).join("; ") : e[c])).join(",")));
  const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `usage-events-page-${state.cursors.length}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// -- wiring --------------------------------------------------------------------------------------

function start() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("period-form").addEventListener("submit", (event) => { event.preventDefault(); loadPeriod(); });
  document.querySelectorAll("[data-days]").forEach((button) => button.addEventListener("click", () => {
    setPeriod(Number(button.dataset.days));
    loadPeriod();
  }));
  $("events-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearError();
    loadEvents(true).catch(showError);
  });
  $("next").addEventListener("click", () => {
    state.cursors.push(state.next);
    loadEvents(false).catch((error) => { state.cursors.pop(); showError(error); });
  });
  $("prev").addEventListener("click", () => {
    const left = state.cursors.pop();
    loadEvents(false).catch((error) => { state.cursors.push(left); showError(error); });
  });
  $("csv").addEventListener("click", downloadCsv);
  let timer = null;
  window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(resizeCharts, 150); });
  setPeriod(30);
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) signIn(key);
  else { $("sign-in").hidden = false; say("Sign in with an API key to see your organization's usage."); }
}

start();
