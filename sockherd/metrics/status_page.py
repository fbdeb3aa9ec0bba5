"""`/status`: one self-contained HTML page (no external assets) over `/status.json`.

The page fetches `status.json` (relative, so a path prefix in front of the
endpoint still works) on load and every 2 s, and draws: the supervisor's state
and uptime; per server a summary (mode, workers idle/busy/total, accepted
requests, in progress, listen queue against its backlog, slow requests, times
every worker was busy), the worker table (slot, pid, state, current request,
elapsed, requests, CPU, RSS, PSS, age; busy rows first by elapsed), and the last
exit of each slot with its cause.  Text from the server is inserted as text
nodes, never as HTML.  If a fetch fails, the page says so and keeps its last data.
"""

from __future__ import annotations

# ruff: noqa: E501 (the page is HTML, CSS and JavaScript, not Python)

PAGE = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sockherd status</title>
<style>
:root { --bg:#f4f6f9; --card:#fff; --ink:#1d2330; --mute:#6b7385; --line:#e3e7ee;
  --idle:#2f9e6b; --busy:#d9822b; --start:#3b82c4; --stop:#8a6bc4; --bad:#c0392b; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  background:var(--bg); color:var(--ink); }
header { background:#1d2330; color:#fff; padding:14px 24px; display:flex; gap:18px;
  align-items:center; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.3px; }
header .meta { color:#b8c0d0; font-size:13px; }
header .spacer { flex:1; }
#updated { font-size:12px; color:#b8c0d0; }
#updated.stale { color:#ffb4a8; }
main { padding:18px 24px 40px; max-width:1400px; }
section.server { background:var(--card); border:1px solid var(--line); border-radius:10px;
  margin-bottom:22px; box-shadow:0 1px 2px rgba(20,30,50,.05); overflow:hidden; }
section.server > h2 { margin:0; padding:12px 18px; font-size:16px; border-bottom:1px solid var(--line);
  display:flex; gap:10px; align-items:baseline; }
h2 .mode { font-size:12px; color:var(--mute); font-weight:500; }
.cards { display:flex; flex-wrap:wrap; gap:10px; padding:14px 18px; }
.card { border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:118px; }
.card .v { font-size:20px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .k { font-size:11px; color:var(--mute); text-transform:uppercase; letter-spacing:.5px; }
.bar { height:5px; background:var(--line); border-radius:3px; margin-top:5px; overflow:hidden; }
.bar > span { display:block; height:100%; background:var(--busy); }
h3 { font-size:12px; text-transform:uppercase; letter-spacing:.6px; color:var(--mute);
  margin:16px 18px 6px; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:6px 12px; text-align:left; border-top:1px solid var(--line); white-space:nowrap; }
th { font-size:11px; color:var(--mute); font-weight:600; text-transform:uppercase;
  letter-spacing:.4px; background:#fafbfc; }
td.num, th.num { text-align:right; }
td.req { white-space:normal; overflow-wrap:anywhere; max-width:560px; font-family:ui-monospace,
  SFMono-Regular,Menlo,monospace; font-size:12.5px; }
tr.busy td { background:#fff8ef; }
.pill { display:inline-block; padding:1px 9px; border-radius:10px; font-size:12px; color:#fff;
  font-weight:600; }
.s-idle { background:var(--idle); } .s-busy { background:var(--busy); }
.s-starting { background:var(--start); } .s-stopping, .s-dead { background:var(--stop); }
.c-oom, .c-signal, .c-timeout, .c-exit, .c-boot_failure { background:var(--bad); }
.c-recycled, .c-stopped { background:#7b8494; }
.muted { color:var(--mute); }
.peer { color:var(--mute); white-space:nowrap; }
.empty { padding:10px 18px 16px; color:var(--mute); }
.state-running { color:#7ee2b0; } .state-draining, .state-stopped { color:#ffb4a8; }
.state-reloading, .state-upgrading, .state-starting { color:#ffd98a; }
</style></head>
<body>
<header><h1>sockherd</h1><span class="meta" id="sup">loading&hellip;</span>
<span class="spacer"></span><span id="updated"></span></header>
<main id="servers"></main>
<script>
"use strict";
const REFRESH_MS = 2000;
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined)
    node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  return node;
}
function secs(s) {
  if (s === null || s === undefined) return "\\u2013";
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  const h = Math.floor(s / 3600);
  return h < 48 ? h + " h " + Math.floor((s % 3600) / 60) + " min" : Math.floor(h / 24) + " d";
}
function bytes(n) {
  if (n === null || n === undefined) return "\\u2013";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}
function cpu(s) { return s === null || s === undefined ? "\\u2013" : s.toFixed(2) + " s"; }
function card(label, value, ratio) {
  const c = el("div", {class: "card"}, el("div", {class: "v"}, value), el("div", {class: "k"}, label));
  if (ratio !== undefined) {
    const bar = el("div", {class: "bar"}, el("span", {style: "width:" + Math.min(100, ratio * 100) + "%"}));
    c.appendChild(bar);
  }
  return c;
}
function workerTable(workers) {
  const rows = workers.slice().sort((a, b) =>
    (b.state === "busy") - (a.state === "busy") || (b.request_elapsed || 0) - (a.request_elapsed || 0)
    || a.slot - b.slot);
  const head = el("tr", {}, ...["slot", "pid", "state", "current request", "elapsed", "requests",
    "CPU", "RSS", "PSS", "age"].map((h, i) => el("th", {class: i > 3 ? "num" : ""}, h)));
  const table = el("table", {class: "workers"}, el("thead", {}, head));
  const body = el("tbody");
  for (const w of rows) {
    const busy = w.state === "busy";
    const request = busy && w.request ? el("span", {}, w.request,
      w.peer && w.peer !== w.request ? el("span", {class: "peer"}, " \\u2190 " + w.peer) : null)
      : el("span", {class: "muted"}, "\\u2013");
    body.appendChild(el("tr", {class: busy ? "busy" : "", "data-slot": w.slot},
      el("td", {}, w.slot), el("td", {}, w.pid),
      el("td", {}, el("span", {class: "pill s-" + w.state}, w.state)),
      el("td", {class: "req"}, request),
      el("td", {class: "num elapsed"}, busy ? secs(w.request_elapsed) : "\\u2013"),
      el("td", {class: "num"}, w.requests), el("td", {class: "num"}, cpu(w.cpu_seconds)),
      el("td", {class: "num"}, bytes(w.rss)), el("td", {class: "num"}, bytes(w.pss)),
      el("td", {class: "num"}, secs(w.age))));
  }
  table.appendChild(body);
  return table;
}
function exitTable(exits) {
  if (!exits.length) return el("div", {class: "empty"}, "No worker has exited yet.");
  const rows = exits.slice().sort((a, b) => b.at - a.at);
  const head = el("tr", {}, ...["slot", "pid", "cause", "status", "when", "request it held",
    "after"].map(h => el("th", {}, h)));
  const body = el("tbody");
  for (const x of rows) {
    body.appendChild(el("tr", {},
      el("td", {}, x.slot), el("td", {}, x.pid),
      el("td", {}, el("span", {class: "pill c-" + x.cause}, x.cause)), el("td", {}, x.status),
      el("td", {}, new Date(x.at * 1000).toLocaleTimeString()),
      el("td", {class: "req"}, x.request ? el("span", {}, x.request, x.peer && x.peer !== x.request ?
        el("span", {class: "peer"}, " \\u2190 " + x.peer) : null) : el("span", {class: "muted"}, "none")),
      el("td", {}, x.request_elapsed === null ? "\\u2013" : secs(x.request_elapsed))));
  }
  return el("table", {class: "exits"}, el("thead", {}, head), body);
}
function serverSection(s) {
  const sec = el("section", {class: "server"},
    el("h2", {}, s.label, el("span", {class: "mode"}, s.mode)));
  const cards = el("div", {class: "cards"});
  const p = s.pool;
  if (p) {
    cards.appendChild(card("busy / workers", p.workers_busy + " / " + p.workers_total,
      p.workers_total ? p.workers_busy / p.workers_total : 0));
    cards.appendChild(card("idle", p.workers_idle));
    cards.appendChild(card("desired", p.desired + " (" + p.settings.min_workers + "\\u2013" + p.settings.max_workers + ")"));
  }
  cards.appendChild(card("accepted", s.accepted));
  cards.appendChild(card("in progress", s.in_progress));
  if (s.listen_queue) cards.appendChild(card("listen queue", s.listen_queue.length + " / " +
    s.listen_queue.backlog, s.listen_queue.backlog ? s.listen_queue.length / s.listen_queue.backlog : 0));
  if (p) {
    cards.appendChild(card("slow requests", p.slow_requests));
    cards.appendChild(card("times all busy", p.max_workers_reached));
    const restarts = Object.entries(p.exit_causes).filter(([, v]) => v).map(([k, v]) => k + " " + v);
    cards.appendChild(card("exits", restarts.length ? restarts.join(", ") : "none"));
  }
  sec.appendChild(cards);
  if (p) {
    sec.appendChild(el("h3", {}, "Workers"));
    sec.appendChild(workerTable(p.workers));
    sec.appendChild(el("h3", {}, "Last exit per slot"));
    sec.appendChild(exitTable(p.last_exits));
  }
  return sec;
}
function draw(doc) {
  const sup = doc.supervisor;
  const meta = document.getElementById("sup");
  meta.replaceChildren(el("span", {class: "state-" + sup.state}, sup.state),
    " \\u00b7 pid " + sup.pid + " \\u00b7 up " + secs(sup.uptime) +
    (sup.drain_seconds_left !== null ? " \\u00b7 " + secs(sup.drain_seconds_left) + " left to drain" : "") +
    (sup.ready ? " \\u00b7 ready" : " \\u00b7 not ready: " + sup.ready_reason));
  document.getElementById("servers").replaceChildren(...doc.servers.map(serverSection));
  document.title = "sockherd \\u00b7 " + sup.state;
}
let refreshes = 0;
async function refresh() {
  const stamp = document.getElementById("updated");
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    refreshes++;
    document.body.setAttribute("data-refreshes", refreshes);
    stamp.className = "";
    stamp.textContent = "updated " + new Date().toLocaleTimeString() + " \\u00b7 every 2 s";
  } catch (error) {
    stamp.className = "stale";
    stamp.textContent = "refresh failed (" + error.message + "); showing the last data";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body></html>
"""
