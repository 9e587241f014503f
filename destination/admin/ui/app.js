// Tributary's status page. It reads the admin JSON API (/api/v1/) and
// builds every element with createElement and textContent: what a source
// sent (names, labels, errors) is never parsed as HTML.
"use strict";

(function () {
  const POLL_MS = 2000;
  const LIMIT = 50;
  const state = { q: "", offset: 0, total: 0, service: "", zone: "", busy: false, timer: 0 };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function cell(tr, text, cls) {
    const td = el("td", text, cls);
    tr.appendChild(td);
    return td;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  async function getJSON(path) {
    const resp = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body && body.error ? body.error : resp.status + " " + resp.statusText);
    return body;
  }

  function ago(ts) {
    if (!ts) return "never";
    const d = new Date(ts);
    const s = Math.round((Date.now() - d.getTime()) / 1000);
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function stateClass(st) {
    return st === "synced" ? "ok" : (st === "syncing" ? "warn" : "bad");
  }

  function renderSources(data) {
    $("version").textContent = data.version || "";
    const ready = $("ready");
    ready.textContent = data.ready ? "ready" : "not ready";
    ready.className = "badge " + (data.ready ? "ok" : "bad");
    const rows = data.sources.map((s) => {
      const tr = el("tr");
      tr.dataset.source = s.name;
      cell(tr, s.name);
      cell(tr, s.kind);
      cell(tr, s.state, stateClass(s.state));
      cell(tr, s.services, "num");
      cell(tr, s.endpoints, "num");
      cell(tr, ago(s.last_success));
      const err = s.last_error ? s.last_error + " (" + ago(s.last_error_time) + ")" : "";
      cell(tr, err, s.stale || !s.synced ? "bad" : "muted");
      cell(tr, s.errors, "num");
      return tr;
    });
    replaceRows($("sources").tBodies[0], rows);
    const panics = data.panicking || [];
    $("panicking").hidden = panics.length === 0;
    const SHOWN = 20;
    const items = panics.slice(0, SHOWN).map((p) => {
      const li = el("li");
      li.appendChild(serviceLink(p.authority));
      li.appendChild(el("span", " " + p.serving + " of " + p.addresses + " addresses serving, since " + ago(p.since), "muted"));
      return li;
    });
    const total = data.panicking_total || panics.length;
    if (total > SHOWN) items.push(el("li", "and " + (total - SHOWN) + " more", "muted"));
    $("panicking-title").textContent = "In panic mode (" + total + ")";
    $("panicking-list").replaceChildren(...items);
  }

  function serviceLink(authority) {
    const b = el("button", authority, "link");
    b.type = "button";
    b.addEventListener("click", () => openService(authority));
    return b;
  }

  function counts(obj) {
    return Object.keys(obj).sort().map((k) => k + " " + obj[k]).join(", ");
  }

  function renderServices(data) {
    state.total = data.total;
    $("services-total").textContent = "(" + data.total + (state.q ? " matching" : "") + ")";
    const from = data.total === 0 ? 0 : data.offset + 1;
    const to = data.offset + data.services.length;
    $("page").textContent = from + "–" + to + " of " + data.total;
    $("prev").disabled = data.offset === 0;
    $("next").disabled = to >= data.total;
    const rows = data.services.map((s) => {
      const tr = el("tr");
      tr.dataset.authority = s.authority;
      cell(tr, "").appendChild(serviceLink(s.authority));
      cell(tr, s.sources.join(", "));
      cell(tr, s.endpoints, "num");
      cell(tr, s.served + (s.panic ? " (panic)" : ""), "num" + (s.panic ? " bad" : ""));
      cell(tr, counts(s.by_health), s.by_health.critical ? "warn" : "");
      return tr;
    });
    replaceRows($("services").tBodies[0], rows);
  }

  function renderService(v) {
    $("service-section").hidden = false;
    $("service-authority").textContent = v.authority;
    const sel = $("zone");
    const zones = [""].concat(v.zones);
    if (state.zone && !zones.includes(state.zone)) zones.push(state.zone);
    const opts = zones.map((z) => {
      const o = el("option", z === "" ? "(none: no topology hints)" : z);
      o.value = z;
      o.selected = z === state.zone;
      return o;
    });
    sel.replaceChildren(...opts);
    let summary = v.exists ? "" : "no source declares it. ";
    summary += "served: " + v.served + " of " + v.endpoints.length + " endpoints";
    if (v.panic) summary += "; PANIC MODE: " + v.serving_addresses + " of " + v.addresses + " addresses serving";
    summary += "; panic threshold " + Math.round(v.panic_threshold * 100) + "%";
    if (v.tiers && v.tiers.length) summary += "; failover tier in use: " + (v.tier < v.tiers.length ? v.tier : "the unnamed sources");
    if (v.members.length > 1) summary += "; aliases: " + v.members.slice(1).join(", ");
    const sum = $("service-summary");
    sum.textContent = summary;
    sum.className = v.panic ? "bad" : "";
    const rows = v.endpoints.map((e) => {
      const tr = el("tr", null, e.served ? "served" : "not-served");
      tr.dataset.address = e.address;
      tr.dataset.reason = e.reason;
      tr.dataset.health = e.health;
      cell(tr, e.address, "mono");
      cell(tr, e.zone || "");
      const hc = cell(tr, e.health + (e.stale ? " (stale)" : ""), e.health === "critical" ? "bad" : (e.health === "passing" ? "ok" : ""));
      hc.appendChild(el("div", e.health_from === "source" ? "from the source" : e.health_from.replace("check:", "") + " check", "muted"));
      if (e.check && e.check.last_error) {
        // The check's last failure, as text: an error may quote the peer.
        let fail = "last failure: " + e.check.last_error + " (" + e.check.last_error_time;
        if (e.check.consecutive_failures > 0) fail += ", " + e.check.consecutive_failures + " in a row";
        fail += ")";
        hc.appendChild(el("div", fail, "muted check-error"));
      }
      cell(tr, e.served ? "yes" : "no", e.served ? "ok" : "bad");
      cell(tr, e.why);
      cell(tr, e.source + " / " + e.key);
      cell(tr, e.identity || "");
      cell(tr, e.weight, "num");
      const labels = cell(tr, "", "labels");
      for (const k of Object.keys(e.labels || {}).sort()) labels.appendChild(el("span", k + "=" + e.labels[k]));
      return tr;
    });
    replaceRows($("endpoints").tBodies[0], rows);
  }

  async function refresh() {
    if (state.busy) return;
    state.busy = true;
    try {
      const q = "q=" + encodeURIComponent(state.q) + "&offset=" + state.offset + "&limit=" + LIMIT;
      const [sources, services] = await Promise.all([getJSON("/api/v1/sources"), getJSON("/api/v1/services?" + q)]);
      renderSources(sources);
      renderServices(services);
      if (state.service) {
        const v = await getJSON("/api/v1/services/" + encodeURIComponent(state.service) + "?zone=" + encodeURIComponent(state.zone));
        if (state.service) renderService(v);
      }
      $("error").textContent = "";
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      $("error").textContent = "cannot read the API: " + err.message;
    } finally {
      state.busy = false;
    }
  }

  function writeHash() {
    const p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    if (state.offset) p.set("offset", String(state.offset));
    if (state.service) p.set("service", state.service);
    if (state.zone) p.set("zone", state.zone);
    const h = p.toString();
    history.replaceState(null, "", h ? "#" + h : location.pathname);
  }

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    state.q = p.get("q") || "";
    state.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
    state.service = p.get("service") || "";
    state.zone = p.get("zone") || "";
    $("q").value = state.q;
  }

  function openService(authority) {
    state.service = authority;
    state.zone = "";
    writeHash();
    state.busy = false;
    refresh();
  }

  function start() {
    readHash();
    let debounce = 0;
    $("q").addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        state.q = $("q").value.trim();
        state.offset = 0;
        writeHash();
        refresh();
      }, 200);
    });
    $("prev").addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - LIMIT);
      writeHash();
      refresh();
    });
    $("next").addEventListener("click", () => {
      if (state.offset + LIMIT < state.total) state.offset += LIMIT;
      writeHash();
      refresh();
    });
    $("zone").addEventListener("change", () => {
      state.zone = $("zone").value;
      writeHash();
      refresh();
    });
    $("close-service").addEventListener("click", () => {
      state.service = "";
      state.zone = "";
      $("service-section").hidden = true;
      writeHash();
    });
    refresh();
    state.timer = setInterval(refresh, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
