// Garage peer dashboard: reads this peer's /garage/v1/ JSON API and draws it. No framework, no build step.
// Every string that comes from the network goes into the page through textContent or an attribute, never as HTML.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 8000;
  const KEY_STORE = "garage.dashboard.key";
  const SOURCES = {
    status: "/garage/v1/status",
    peers: "/garage/v1/peers",
    models: "/garage/v1/models",
    ledger: "/garage/v1/ledger",
    jobs: "/garage/v1/jobs",
    requests: "/garage/v1/requests",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    key: readKey(),
    needKey: false,
    checked: false, // the endpoint's gate accepted us (with state.key, or without a key where none is needed)
    busy: false,
    timer: null,
    delay: REFRESH_MS,
    me: null,
  };

  // -- the key: this tab's session storage only, sent as a header, never in a URL -------------------

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORE);
    } catch (e) {
      return null;
    }
  }

  function writeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch (e) {
      // Storage refused (private mode): the key lives in memory for this page only.
    }
  }

  function askKey(message) {
    state.needKey = true;
    state.checked = false;
    if (state.key) {
      state.key = null;
      writeKey(null);
    }
    clearTimeout(state.timer);
    $("content").hidden = true;
    $("forget-key").hidden = true;
    $("key-panel").hidden = false;
    const error = $("key-error");
    error.textContent = message || "";
    error.hidden = !message;
    setLive("locked", "API key needed");
    $("key-input").focus();
  }

  function useKey(event) {
    event.preventDefault();
    const input = $("key-input");
    const key = input.value.trim();
    if (!key) return;
    input.value = "";
    state.key = key;
    writeKey(key);
    state.needKey = false;
    state.checked = false;
    $("key-panel").hidden = true;
    $("content").hidden = false;
    $("forget-key").hidden = false;
    schedule(0);
  }

  function forgetKey() {
    state.key = null;
    writeKey(null);
    state.checked = false;
    $("forget-key").hidden = true;
    schedule(0);
  }

  // -- fetching -------------------------------------------------------------------------------------

  class FetchError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status; // 0: the peer did not answer
      this.retryAfter = retryAfter;
    }
  }

  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = "Bearer " + state.key;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      let response;
      try {
        response = await fetch(path, { headers, cache: "no-store", credentials: "omit", redirect: "error", signal: abort.signal });
      } catch (e) {
        throw new FetchError(0, e && e.name === "AbortError" ? "the peer did not answer in time" : "cannot reach the peer");
      }
      let body = null;
      try {
        body = await response.json();
      } catch (e) {
        body = null;
      }
      if (!response.ok) {
        const message = body && body.error && typeof body.error.message === "string" ? body.error.message : `HTTP ${response.status}`;
        throw new FetchError(response.status, message, Number(response.headers.get("retry-after")) || 0);
      }
      if (body === null) throw new FetchError(response.status, "the peer's answer is not JSON");
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  async function checkAccess() {
    // The endpoint's own gate decides: where /v1/models wants a key, the page asks for one, and a wrong key is refused here.
    try {
      await getJSON("/v1/models");
      state.checked = true;
      return true;
    } catch (e) {
      if (e.status === 401) {
        askKey(e.message);
        return false;
      }
      throw e;
    }
  }

  async function refresh() {
    if (!state.checked && !(await checkAccess())) return;
    const names = Object.keys(SOURCES);
    const results = await Promise.allSettled(names.map((name) => getJSON(SOURCES[name])));
    let refused = null;
    let unreachable = 0;
    let retryAfter = 0;
    results.forEach((result, i) => {
      const name = names[i];
      if (result.status === "fulfilled") {
        try {
          RENDER[name](result.value);
          sectionError(name, null);
        } catch (e) {
          sectionError(name, `Unexpected answer from ${SOURCES[name]}: ${e && e.message}`);
        }
        return;
      }
      const e = result.reason;
      if (e.status === 401) refused = e;
      else if (e.status === 0) unreachable += 1;
      else if (name === "requests" && e.status === 404) renderRequestsUnavailable();
      else {
        if (e.status === 429) retryAfter = Math.max(retryAfter, e.retryAfter || 0);
        sectionError(name, `${SOURCES[name]}: ${e.message}`);
      }
    });
    if (refused) {
      askKey(refused.message);
      return;
    }
    state.delay = Math.max(REFRESH_MS, retryAfter * 1000);
    if (unreachable > 0) {
      showGlobal(`Cannot reach the peer at ${location.host}: showing what it last said; trying again every ${REFRESH_MS / 1000} s.`);
      setLive("down", "unreachable");
      $("content").classList.add("stale");
      return;
    }
    showGlobal(null);
    $("content").classList.remove("stale");
    setLive("ok", retryAfter ? "rate limited" : "live");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  // -- the loop: one refresh at a time, every 2 s, paused while the tab is hidden ---------------------

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(tick, delay);
  }

  async function tick() {
    state.timer = null;
    if (state.busy || state.needKey) return;
    if (document.hidden) {
      setLive("paused", "paused (tab hidden)");
      return;
    }
    state.busy = true;
    try {
      await refresh();
    } catch (e) {
      showGlobal(`Cannot reach the peer at ${location.host} (${e && e.message}); trying again.`);
      setLive("down", "unreachable");
    } finally {
      state.busy = false;
    }
    if (!state.needKey && !document.hidden) schedule(state.delay);
    else if (document.hidden) setLive("paused", "paused (tab hidden)");
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(state.timer);
      if (!state.busy && !state.needKey) setLive("paused", "paused (tab hidden)");
    } else if (!state.busy && !state.needKey) {
      schedule(0);
    }
  });

  // -- drawing --------------------------------------------------------------------------------------

  function setLive(kind, text) {
    const badge = $("live-state");
    badge.className = "badge " + kind;
    badge.textContent = text;
  }

  function showGlobal(message) {
    const el = $("global-error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function sectionError(name, message) {
    const el = document.querySelector(`[data-error-for="${name}"]`);
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
    if (name === "requests" && message === null) $("requests-unavailable").hidden = true;
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    return node;
  }

  function shortId(id) {
    id = String(id);
    return id.length > 18 ? id.slice(0, 8) + "…" + id.slice(-6) : id;
  }

  function peerNode(id, full) {
    if (id === null || id === undefined || id === "") return el("span", "—");
    const node = el("code", full ? id : shortId(id), { class: full ? "id" : "id short", title: id, "data-peer": id });
    if (id === state.me) {
      const wrap = el("span");
      wrap.append(node, " ", el("span", "this peer", { class: "tag" }));
      return wrap;
    }
    return node;
  }

  function fillTable(id, rows, emptyText) {
    const body = $(id).tBodies[0];
    const columns = $(id).tHead.rows[0].cells.length;
    const fresh = document.createElement("tbody");
    if (!rows.length) {
      fresh.append(el("tr", null, { class: "empty" }));
      fresh.rows[0].append(el("td", emptyText, { colspan: columns }));
    }
    for (const cells of rows) {
      const tr = document.createElement("tr");
      cells.forEach((value, i) => {
        const td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) td.setAttribute("scope", "row");
        if (value instanceof Node) td.append(value);
        else td.textContent = value === null || value === undefined ? "—" : String(value);
        if (typeof value === "number") td.className = "num";
        tr.append(td);
      });
      fresh.append(tr);
    }
    body.replaceWith(fresh);
  }

  function num(value, digits) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "—";
    return value.toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
  }

  function duration(s) {
    if (typeof s !== "number" || !Number.isFinite(s)) return "—";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function gpuTime(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
    if (seconds === 0) return "0";
    if (seconds < 60) return `${seconds.toPrecision(3)} s`;
    return duration(seconds);
  }

  function list(items) {
    return Array.isArray(items) && items.length ? items.map(String).join(", ") : "none";
  }

  function fact(dl, term, value) {
    dl.append(el("dt", term));
    const dd = el("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
    dl.append(dd);
  }

  function renderStatus(s) {
    state.me = typeof s.peer_id === "string" ? s.peer_id : null;
    const dl = document.createElement("dl");
    dl.id = "peer-info";
    dl.className = "facts";
    fact(dl, "Peer ID", el("code", s.peer_id, { class: "id", id: "peer-id" }));
    fact(dl, "Version", s.version);
    fact(dl, "Uptime", duration(s.uptime_s));
    fact(dl, "Reachability", s.reachability);
    fact(dl, "Region", s.region);
    fact(dl, "Hardware", s.hardware);
    fact(dl, "Models served", list(s.models));
    const backends = Array.isArray(s.backends) ? s.backends : [];
    const sick = backends.filter((b) => b && !b.healthy).map((b) => b.model);
    if (sick.length) fact(dl, "Unhealthy backends", list(sick));
    fact(dl, "Connections", num(s.connections, 0));
    fact(dl, "Peers known", num(s.known_peers, 0));
    fact(dl, "DHT", s.dht_mode);
    fact(dl, "Draining", s.draining ? "yes" : "no");
    // Why the rig does not serve: the owner comes first (owner activity, schedule), or a drain.
    fact(dl, "Serving", typeof s.not_serving === "string" ? `no: ${s.not_serving}` : "yes");
    fact(dl, "Requests in flight", num(s.in_flight, 0));
    if (s.runtime && typeof s.runtime === "object") fact(dl, "Model container", s.runtime.state || s.runtime.status || "present");
    if (s.ledger && typeof s.ledger === "object") {
      fact(dl, "GPU time given / used", `${gpuTime(s.ledger.contributed_gpu_hours * 3600)} / ${gpuTime(s.ledger.consumed_gpu_hours * 3600)}`);
    }
    $("peer-info").replaceWith(dl);
  }

  function counts(id, pairs) {
    const ul = document.createElement("ul");
    ul.id = id;
    ul.className = "counts";
    for (const [label, value] of pairs) {
      const li = el("li", null, { "data-count": label });
      li.append(el("strong", value), " ", label);
      ul.append(li);
    }
    $(id).replaceWith(ul);
  }

  function renderPeers(data) {
    const peers = Array.isArray(data.peers) ? data.peers : [];
    const kinds = { direct: 0, relayed: 0, none: 0 };
    for (const p of peers) kinds[p.connection in kinds ? p.connection : "none"] += 1;
    counts("mesh-summary", [
      ["known", peers.length],
      ["direct", kinds.direct],
      ["relayed", kinds.relayed],
      ["not connected", kinds.none],
    ]);
    fillTable(
      "peers-table",
      peers.map((p) => [
        peerNode(p.peer_id, false),
        el("span", p.connection, { class: "conn " + String(p.connection) }),
        p.rtt_ms === null || p.rtt_ms === undefined ? "—" : `${num(p.rtt_ms)} ms`,
        list(p.models),
        p.hardware,
        p.region,
        p.version,
        `${duration(p.last_seen_s)} ago`,
      ]),
      "No other peer known yet.",
    );
  }

  function renderModels(data) {
    const models = Array.isArray(data.models) ? data.models : [];
    fillTable(
      "models-table",
      models.map((m) => {
        const providers = Array.isArray(m.providers) ? m.providers : [];
        const who = el("span");
        providers.forEach((p, i) => {
          if (i) who.append(", ");
          who.append(peerNode(p, false));
        });
        return [m.model, providers.length, num(m.aggregate_tps), num(m.running, 0), m.context_length, who];
      }),
      "No model served in the mesh.",
    );
  }

  function renderRequests(data) {
    $("requests-unavailable").hidden = true;
    const inFlight = Array.isArray(data.in_flight) ? data.in_flight : [];
    const recent = Array.isArray(data.recent) ? data.recent : [];
    fillTable(
      "inflight-table",
      inFlight.map((r) => [el("code", r.id, { class: "id short" }), r.role, r.model, peerNode(r.peer, false), r.path, r.stream ? "yes" : "no", duration(r.age_s), num(r.tokens_out, 0)]),
      "None right now.",
    );
    const now = Date.now() / 1000;
    fillTable(
      "recent-table",
      recent.map((r) => [
        el("code", r.id, { class: "id short" }),
        r.role,
        r.model,
        peerNode(r.peer, false),
        el("span", r.status, { class: Number(r.status) >= 400 ? "bad" : "good" }),
        duration(r.latency_s),
        r.ttft_s === null || r.ttft_s === undefined ? "—" : duration(r.ttft_s),
        num(r.tokens_in, 0),
        num(r.tokens_out, 0),
        typeof r.ended_at === "number" ? `${duration(Math.max(0, now - r.ended_at))} ago` : "—",
      ]),
      "None yet.",
    );
  }

  function renderRequestsUnavailable() {
    sectionError("requests", null);
    $("requests-unavailable").hidden = false;
    fillTable("inflight-table", [], "Not available.");
    fillTable("recent-table", [], "Not available.");
  }

  function renderLedger(data) {
    const peers = Array.isArray(data.peers) ? data.peers : [];
    const flagged = Array.isArray(data.flagged) ? data.flagged : [];
    counts("ledger-summary", [
      ["entries", num(data.entries, 0)],
      ["authors", num(data.authors, 0)],
      ["flagged", flagged.length],
    ]);
    fillTable(
      "balances-table",
      peers.map((b) => {
        const given = b.contributed || {};
        const used = b.consumed || {};
        return [
          peerNode(b.peer_id, false),
          gpuTime(given.gpu_seconds),
          gpuTime(used.gpu_seconds),
          el("span", num(b.net_gpu_hours, 6), { class: b.net_gpu_hours < 0 ? "bad" : "good" }),
          num(given.requests, 0),
          num(used.requests, 0),
          num(given.tokens, 0),
          b.flagged ? el("span", "yes (fork)", { class: "bad" }) : "no",
        ];
      }),
      "No receipts yet.",
    );
    const models = Array.isArray(data.models) ? data.models : [];
    fillTable("ledger-models-table", models.map((m) => [m.model, num(m.requests, 0), num(m.tokens, 0), gpuTime(m.gpu_seconds)]), "No receipts yet.");
  }

  function renderJobs(data) {
    const jobs = Array.isArray(data.jobs) ? data.jobs : [];
    fillTable(
      "jobs-table",
      jobs.map((j) => {
        const total = Number(j.total) || 0;
        const done = Number(j.done) || 0;
        const progress = el("span", null, { class: "progress" });
        const bar = el("progress", null, { max: Math.max(total, 1), value: Math.min(done, Math.max(total, 1)), "aria-label": `job ${j.id}: ${done} of ${total} lines done` });
        progress.append(bar, " ", el("span", `${done} / ${total}`, { class: "done" }));
        const status = el("span", j.status, { class: "status " + String(j.status) });
        return [el("code", j.id, { class: "id short" }), j.model, status, progress, num(j.failed, 0), num(j.in_flight, 0), num(j.tokens_per_s), j.eta_s === null || j.eta_s === undefined ? "—" : duration(j.eta_s), Array.isArray(j.providers) ? j.providers.length : "—"];
      }),
      "No job submitted from this peer.",
    );
  }

  const RENDER = { status: renderStatus, peers: renderPeers, models: renderModels, ledger: renderLedger, jobs: renderJobs, requests: renderRequests };

  // -- start ----------------------------------------------------------------------------------------

  function start() {
    $("key-form").addEventListener("submit", useKey);
    $("forget-key").addEventListener("click", forgetKey);
    $("forget-key").hidden = !state.key;
    schedule(0);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
