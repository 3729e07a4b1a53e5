"""The /status page: one self-contained HTML document (no build step, nothing external).

The page carries no data.  Its script takes the admin token from the URL fragment
(``/status#token=...``; a fragment is never sent to the server), keeps it in
sessionStorage and removes it from the address bar, then polls
GET /admin/v1/status.json every two seconds and updates the figures in place.
Every text that comes from the server (domains, SMTP replies of remote hosts) is
set with ``textContent``, never parsed as HTML; the Content-Security-Policy allows
the inline script and style and connections to this origin only.
"""

from __future__ import annotations

STATUS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>relay status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
#note { color: #666; }
#problem { color: #b00; font-weight: bold; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; margin-top: 1em; }
.figure { border: 1px solid #ccc; border-radius: 4px; padding: .5em .9em; min-width: 8em; }
.figure span { display: block; font-size: 1.6em; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .15em .8em .15em 0; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.reply { max-width: 40em; word-break: break-word; color: #a40; }
svg { border: 1px solid #ccc; background: #fafafa; }
</style>
</head>
<body>
<h1>relay status</h1>
<div id="note">shard <span id="shard">-</span>, updated <span id="updated">never</span></div>
<div id="problem"></div>
<div class="figures">
  <div class="figure">queued messages<span id="queued">-</span></div>
  <div class="figure">delivered / s<span id="rate">-</span></div>
  <div class="figure">delivered<span id="delivered">-</span></div>
  <div class="figure">deferred<span id="deferred">-</span></div>
  <div class="figure">bounced<span id="bounced">-</span></div>
  <div class="figure">delivery sessions<span id="sessions">-</span></div>
</div>
<h2>Queue depth (<span id="span">-</span>)</h2>
<svg id="chart" width="600" height="120" viewBox="0 0 600 120" role="img"
  aria-label="queue depth over time"><polyline id="line" fill="none" stroke="#2a6"
  stroke-width="2" points=""></polyline><text id="peak" x="4" y="14" font-size="11"></text></svg>
<h2>Destinations (ready queues)</h2>
<table>
<thead><tr><th>site</th><th>sessions</th><th>ready jobs</th><th>window</th><th>state</th></tr>
</thead><tbody id="sites"></tbody></table>
<h2>Recipient domains</h2>
<table>
<thead><tr><th>domain</th><th>delivered</th><th>deferred</th><th>bounced</th>
<th>last error</th></tr></thead><tbody id="domains"></tbody></table>
<h2>Last errors</h2>
<table>
<thead><tr><th>when</th><th>domain</th><th>mx</th><th>reply</th></tr></thead>
<tbody id="errors"></tbody></table>
<script>
"use strict";
(function () {
  var REFRESH_MS = 2000;
  var match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("relay-admin-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  var token = sessionStorage.getItem("relay-admin-token") || "";

  function byId(id) { return document.getElementById(id); }
  function setText(id, value) { byId(id).textContent = String(value); }
  function cell(row, value, cls) {
    var td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "" : String(value);
    if (cls) { td.className = cls; }
    row.appendChild(td);
  }
  function fill(id, rows, columns) {
    var body = byId(id);
    var fresh = document.createElement("tbody");
    fresh.id = id;
    rows.forEach(function (item) {
      var tr = document.createElement("tr");
      columns.forEach(function (c) { cell(tr, c[0](item), c[1]); });
      fresh.appendChild(tr);
    });
    body.parentNode.replaceChild(fresh, body);
  }
  function chart(history) {
    var width = 600, height = 120, pad = 20;
    if (history.length === 0) { return; }
    var peak = Math.max.apply(null, history.map(function (h) { return h[1]; }).concat([1]));
    var t0 = history[0][0], t1 = history[history.length - 1][0];
    var span = Math.max(t1 - t0, 1);
    var points = history.map(function (h) {
      var x = ((h[0] - t0) / span) * (width - 2) + 1;
      var y = height - 2 - (h[1] / peak) * (height - pad - 2);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    byId("line").setAttribute("points", points.join(" "));
    setText("peak", "peak " + peak);
    setText("span", Math.round(span) + " s");
  }
  function render(doc) {
    setText("shard", doc.shard);
    setText("updated", doc.now);
    setText("queued", doc.queued);
    setText("rate", doc.rates.delivered.toFixed(1));
    setText("delivered", doc.totals.delivered);
    setText("deferred", doc.totals.deferred);
    setText("bounced", doc.totals.bounced);
    setText("sessions", doc.sessions);
    chart(doc.history);
    fill("sites", doc.sites, [
      [function (s) { return s.name; }],
      [function (s) { return s.sessions; }, "n"],
      [function (s) { return s.queued; }, "n"],
      [function (s) { return s.window; }, "n"],
      [function (s) { return s.dead ? "dead (cooling down)" : "ok"; }]
    ]);
    fill("domains", doc.domains, [
      [function (d) { return d.domain; }],
      [function (d) { return d.delivered; }, "n"],
      [function (d) { return d.deferred; }, "n"],
      [function (d) { return d.bounced; }, "n"],
      [function (d) { return d.last_error; }, "reply"]
    ]);
    fill("errors", doc.errors, [
      [function (d) { return d.last_error_at; }],
      [function (d) { return d.domain; }],
      [function (d) { return d.last_error_mx; }],
      [function (d) { return d.last_error; }, "reply"]
    ]);
  }
  function refresh() {
    if (!token) {
      setText("problem", "No admin token: open this page as /status#token=<admin token>.");
      return;
    }
    fetch("/admin/v1/status.json", {
      headers: { "Authorization": "Bearer " + token },
      cache: "no-store",
      credentials: "omit"
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (doc) {
      setText("problem", "");
      render(doc);
    }).catch(function (error) {
      setText("problem", "Cannot read the status: " + error.message);
    }).then(function () {
      setTimeout(refresh, REFRESH_MS);
    });
  }
  refresh();
})();
</script>
</body>
</html>
"""
