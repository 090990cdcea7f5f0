// Sluice dashboard: fills the server-rendered pages from the REST API and keeps them live.
// No framework, no build step.
"use strict";

const sluice = (() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const POLL_MS = 1000;

  const esc = (s) =>
    String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  const num = (n) => {
    if (n === null || n === undefined || Number.isNaN(n)) return "–";
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(2) + " G";
    if (a >= 1e6) return (n / 1e6).toFixed(2) + " M";
    if (a >= 1e4) return (n / 1e3).toFixed(1) + " K";
    return String(Math.round(n));
  };

  const ms = (v) => {
    if (v === null || v === undefined) return "–";
    if (v >= 86400000) return (v / 86400000).toFixed(1) + " days";
    if (v >= 3600000) return (v / 3600000).toFixed(1) + " h";
    if (v >= 60000) return (v / 60000).toFixed(1) + " min";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    return v.toFixed(v < 10 ? 2 : 0) + " ms";
  };

  const time = (t) => (t ? new Date(t).toLocaleTimeString() : "–");
  const bytes = (b) => (b >= 1 << 20 ? (b / (1 << 20)).toFixed(1) + " MiB" : b >= 1024 ? (b / 1024).toFixed(1) + " KiB" : b + " B");

  // The API token, kept in this browser, sent on every call.
  const tokenInput = $("#token");
  if (tokenInput) {
    tokenInput.value = localStorage.getItem("sluice.token") || "";
    tokenInput.addEventListener("change", () => localStorage.setItem("sluice.token", tokenInput.value));
  }

  async function api(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    const token = localStorage.getItem("sluice.token");
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let v;
    try {
      v = JSON.parse(text);
    } catch {
      v = text;
    }
    if (r.status === 401 && tokenInput) tokenInput.classList.add("needed");
    if (!r.ok) throw new Error(v && v.error ? `${v.error.code}: ${v.error.message}` : `HTTP ${r.status}`);
    return v;
  }

  // Runs `f` now and every `every` ms; errors show in the page's error line.
  function poll(f, every = POLL_MS) {
    const tick = async () => {
      try {
        await f();
      } catch (e) {
        const el = $("#job-error") || $("#submit-error");
        if (el) el.textContent = String(e.message || e);
      }
      setTimeout(tick, every);
    };
    tick();
  }

  const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;
  const endpoints = (list) => list.map((e) => `<span class="endpoint">${esc(e.connector)}: ${esc(e.name)}</span>`).join(" ");

  // ---- overview -------------------------------------------------------------------------

  function overview() {
    poll(async () => {
      const jobs = await api("GET", "/api/jobs");
      $("#no-jobs").hidden = jobs.length > 0;
      $("#jobs tbody").innerHTML = jobs
        .slice()
        .reverse()
        .map(
          (j) => `<tr data-job="${j.id}"><td><a href="/jobs/${j.id}">${j.id}</a></td><td><a href="/jobs/${j.id}">${esc(j.name)}</a></td>
<td>${badge(j.status)}</td><td class="n source-records">${num(j.source_records)}</td><td class="n sink-records">${num(j.sink_records)}</td>
<td class="n">${j.restarts ?? 0}</td><td>${time(j.submitted_ms)}</td></tr>`
        )
        .join("");
      const alerts = await api("GET", "/api/alerts");
      $("#alerts tbody").innerHTML = alerts.active.length
        ? alerts.active
            .map(
              (a) => `<tr class="alert-${esc(a.state)}"><td>${esc(a.rule)}</td><td><a href="/jobs/${a.job_id}">${esc(a.job)}</a></td>
<td>${a.state === "firing" ? `<span class="alert">firing</span>` : "pending"}</td><td>${time(a.since_ms)}</td><td>${esc(a.value)}</td></tr>`
            )
            .join("")
        : `<tr><td colspan="5" class="empty">No alert pending or firing.</td></tr>`;
      $("#alert-history tbody").innerHTML = alerts.history.length
        ? alerts.history
            .slice()
            .reverse()
            .slice(0, 100)
            .map(
              (e) => `<tr class="alert-event" data-status="${esc(e.status)}"><td>${e.status === "firing" ? `<span class="alert">fired</span>` : "resolved"}</td><td>${esc(e.rule)}</td>
<td><a href="/jobs/${e.job_id}">${esc(e.job)}</a></td><td>${time(e.started_ms)}</td><td>${time(e.fired_ms)}</td><td>${e.resolved_ms ? time(e.resolved_ms) : "–"}</td><td>${esc(e.value)}</td></tr>`
            )
            .join("")
        : `<tr><td colspan="7" class="empty">No alert has fired yet.</td></tr>`;
      $("#alert-rules").textContent = alerts.rules.length
        ? `Rules: ${alerts.rules.map((r) => `${r.name} (${r.condition.type}${r.job ? " on " + r.job : ""})`).join(", ")}`
        : "No alert rules: add them with --alerts FILE or POST /api/alerts/rules.";
      const lineage = await api("GET", "/api/lineage");
      $("#lineage tbody").innerHTML = lineage
        .map((j) => `<tr><td>${endpoints(j.reads)}</td><td><a href="/jobs/${j.id}">${esc(j.name)}</a> ${badge(j.status)}</td><td>${endpoints(j.writes)}</td></tr>`)
        .join("");
    });
    $("#submit-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      $("#submit-error").textContent = "";
      const body = { sql: $("#sql").value };
      const name = $("#job-name").value.trim();
      if (name) body.name = name;
      const p = parseInt($("#parallelism").value, 10);
      if (p > 0) body.parallelism = p;
      try {
        const r = await api("POST", "/api/jobs", body);
        location.href = `/jobs/${r.id}`;
      } catch (e) {
        $("#submit-error").textContent = e.message;
      }
    });
  }

  // ---- job page -------------------------------------------------------------------------

  // Rates from two samples of the cumulative counters.
  let last = null;

  function rates(job) {
    const now = performance.now();
    const out = {};
    if (last) {
      const dt = (now - last.at) / 1000;
      for (const o of job.operators) {
        const p = last.ops[o.id];
        if (!p || dt <= 0) continue;
        out[o.id] = {
          inRate: Math.max(0, o.records_in - p.records_in) / dt,
          outRate: Math.max(0, o.records_out - p.records_out) / dt,
          busyBlocked: Math.min(1, Math.max(0, o.backpressured_ms - p.backpressured_ms) / (dt * 1000 * o.parallelism)),
          busy: Math.min(1, Math.max(0, o.busy_ms - p.busy_ms) / (dt * 1000 * o.parallelism)),
        };
      }
    }
    last = { at: now, ops: Object.fromEntries(job.operators.map((o) => [o.id, o])) };
    return out;
  }

  // Layered layout: a node's column is its longest distance from a source.
  function layout(graph) {
    const depth = {};
    const byId = Object.fromEntries(graph.nodes.map((n) => [n.id, n]));
    const ins = {};
    for (const e of graph.edges) (ins[e.to] = ins[e.to] || []).push(e.from);
    const d = (id, seen = new Set()) => {
      if (depth[id] !== undefined) return depth[id];
      if (seen.has(id)) return 0;
      seen.add(id);
      depth[id] = Math.max(-1, ...(ins[id] || []).map((f) => d(f, seen))) + 1;
      return depth[id];
    };
    graph.nodes.forEach((n) => d(n.id));
    const cols = {};
    for (const n of graph.nodes) (cols[depth[n.id]] = cols[depth[n.id]] || []).push(n.id);
    const pos = {};
    const W = 270, H = 134, BW = 210, BH = 114;
    for (const [c, ids] of Object.entries(cols)) ids.forEach((id, i) => (pos[id] = { x: 10 + c * W, y: 10 + i * H, w: BW, h: BH, node: byId[id] }));
    const width = 10 + (Math.max(...Object.keys(cols).map(Number)) + 1) * W;
    const height = 10 + Math.max(...Object.values(cols).map((c) => c.length)) * H;
    return { pos, width, height };
  }

  function drawGraph(job, r) {
    const svg = $("#graph");
    const { pos, width, height } = layout(job.graph);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const ops = Object.fromEntries(job.operators.map((o) => [o.id, o]));
    const edges = job.graph.edges
      .map((e) => {
        const a = pos[e.from], b = pos[e.to];
        if (!a || !b) return "";
        const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
        const label = e.partitioning.split("(")[0].toLowerCase();
        return `<path class="edge" d="M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}" marker-end="url(#arrow)"/>
<text class="edge-label" x="${(x1 + x2) / 2}" y="${(y1 + y2) / 2 - 4}">${esc(label)}</text>`;
      })
      .join("");
    const nodes = Object.entries(pos)
      .map(([id, p]) => {
        const o = ops[id] || {};
        const rr = r[id] || {};
        const bp = rr.busyBlocked ?? 0;
        const lines = [
          `in ${num(rr.inRate)}/s → out ${num(rr.outRate)}/s`,
          o.latency_p99_ms != null ? `p99 latency ${ms(o.latency_p99_ms)}` : `records ${num(o.records_out)}`,
          `busy ${((rr.busy ?? 0) * 100).toFixed(0)}% · backpressure ${(bp * 100).toFixed(0)}%`,
          `queue ${num(o.input_queue)}${o.source_lag != null ? ` · lag ${num(o.source_lag)}` : ""}`,
        ];
        const name = p.node.name.length > 28 ? p.node.name.slice(0, 27) + "…" : p.node.name;
        const level = bp > 0.5 ? "high" : bp > 0.1 ? "mid" : "low";
        return `<g class="node bp-${level}" data-node="${id}" transform="translate(${p.x},${p.y})">
<title>${esc(p.node.name)}</title><rect width="${p.w}" height="${p.h}" rx="6"/>
<text x="8" y="18" class="node-name">${esc(name)} ×${p.node.parallelism}</text>
${lines.map((l, i) => `<text x="8" y="${40 + i * 18}" class="node-metric">${esc(l)}</text>`).join("")}</g>`;
      })
      .join("");
    svg.innerHTML = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>${edges}${nodes}`;
  }

  function drawJob(job, r) {
    $("#job-name").textContent = `${job.name} (job ${job.id})`;
    document.title = `${job.name} · Sluice`;
    $("#status").outerHTML = `<span id="status" class="badge ${esc(job.status)}">${esc(job.status)}</span>`;
    $("#job-error").textContent = job.error || "";
    const running = job.status === "running";
    for (const b of ["#cancel", "#savepoint", "#stop-savepoint"]) $(b).disabled = !running;
    const sources = job.operators.filter((o) => o.is_source);
    const sinks = job.operators.filter((o) => o.is_sink);
    const sum = (xs, f) => xs.reduce((a, x) => a + (f(x) || 0), 0);
    $("#source-records").textContent = num(job.source_records);
    $("#sink-records").textContent = num(job.sink_records);
    $("#source-rate").textContent = `${num(sum(sources, (o) => (r[o.id] || {}).outRate))} records/s`;
    $("#sink-rate").textContent = `${num(sum(sinks, (o) => (r[o.id] || {}).inRate))} records/s`;
    const p50 = Math.max(...sinks.map((o) => o.latency_p50_ms ?? -1));
    const p99 = Math.max(...sinks.map((o) => o.latency_p99_ms ?? -1));
    $("#latency").textContent = p99 >= 0 ? `${ms(p50)} / ${ms(p99)}` : "–";
    const wms = sinks.map((o) => o.watermark_ms).filter((w) => w != null);
    $("#lag").textContent = wms.length && running ? ms(Math.max(0, Date.now() - Math.min(...wms))) : "–";
    $("#checkpoint-counts").textContent = `${job.checkpoints.completed} / ${job.checkpoints.failed}`;
    $("#restarts").textContent = String(job.restarts);
    const firing = (job.alerts || []).filter((a) => a.state === "firing");
    $("#alerts-state").innerHTML = firing.length ? `<span class="alert">${firing.length} alert(s) firing: ${esc(firing.map((a) => a.rule).join(", "))}</span>` : "no alerts firing";
    $("#lineage").innerHTML = `${endpoints(job.reads)} → <b>${esc(job.name)}</b> → ${endpoints(job.writes)}`;
    $("#explain").textContent = job.explain;
    $("#job-sql").textContent = job.sql;
    $("#operators tbody").innerHTML = job.operators
      .map((o) => {
        const rr = r[o.id] || {};
        return `<tr data-operator="${o.id}"><td>${esc(o.name)}</td><td class="n">${o.parallelism}</td><td class="n records-in">${num(o.records_in)}</td><td class="n">${num(rr.inRate)}</td>
<td class="n records-out">${num(o.records_out)}</td><td class="n">${num(rr.outRate)}</td>
<td class="n">${o.latency_p99_ms != null ? `${ms(o.latency_p50_ms)} / ${ms(o.latency_p99_ms)}` : "–"}</td>
<td class="n">${((rr.busy ?? 0) * 100).toFixed(0)}%</td><td class="n">${((rr.busyBlocked ?? 0) * 100).toFixed(0)}%</td><td class="n">${num(o.input_queue)}</td>
<td>${o.watermark_ms != null ? new Date(o.watermark_ms).toISOString().replace("T", " ").slice(0, 23) : "–"}</td>
<td class="n">${num(o.dead_letters)}</td><td class="n">${num(o.late_records)}</td></tr>`;
      })
      .join("");
    $("#exceptions").innerHTML = job.failures.length
      ? job.failures
          .slice()
          .reverse()
          .map(
            (f) => `<details class="exception"><summary>${time(f.time_ms)} · ${esc(f.error)} ${f.restarted ? "<em>(restarted)</em>" : ""}</summary>
<pre class="trace">${esc(f.trace || "no stack trace captured")}</pre></details>`
          )
          .join("")
      : `<p class="empty">None.</p>`;
    drawGraph(job, r);
  }

  // The partition an instance took last: when, and how long it stood still then.
  const rebalance = (r) =>
    r
      ? `${esc(r.partition)} at ${esc(new Date(r.at_ms).toLocaleTimeString())}${r.pause_ms == null ? "" : `, paused ${(r.pause_ms / 1000).toFixed(1)} s`}`
      : "–";

  // ---- charts over time ------------------------------------------------------------------

  const COLORS = ["#0b6bcb", "#c62828", "#2e7d32", "#b26a00", "#6d28d9", "#0e7490", "#be185d", "#4b5563"];

  // One chart: `series` are [{name, points: [[t, v], ...]}] over the same time axis.
  function chart(title, series, fmt) {
    const W = 420, H = 140, L = 66, R = 8, T = 8, B = 18;
    const pts = series.flatMap((s) => s.points);
    if (!pts.length) return `<div class="chart" data-chart="${esc(title)}"><h3>${esc(title)}</h3><p class="empty">No samples yet.</p></div>`;
    const t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
    const top = Math.max(...pts.map((p) => p[1]), 0) * 1.1 || 1;
    const x = (t) => L + ((t - t0) / Math.max(t1 - t0, 1)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const lines = series
      .map((s, i) => `<polyline stroke="${COLORS[i % COLORS.length]}" points="${s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ")}"/>`)
      .join("");
    const ticks = [0, 0.5, 1].map((f) => `<text class="tick" x="${L - 4}" y="${y(top * f) + 3}" text-anchor="end">${esc(fmt(top * f))}</text><line class="axis" x1="${L}" x2="${W - R}" y1="${y(top * f)}" y2="${y(top * f)}"/>`).join("");
    const span = `<text class="tick" x="${L}" y="${H - 4}">${esc(time(t0))}</text><text class="tick" x="${W - R}" y="${H - 4}" text-anchor="end">${esc(time(t1))}</text>`;
    const legend = series.map((s, i) => `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(s.name)}</span>`).join("");
    return `<div class="chart" data-chart="${esc(title)}"><h3>${esc(title)}</h3><svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${ticks}${span}${lines}</svg><div class="legend">${legend}</div></div>`;
  }

  function drawCharts(h) {
    const s = h.samples;
    const line = (name, f) => ({ name, points: s.filter((x) => f(x) != null).map((x) => [x.time_ms, f(x)]) });
    const pct = (v) => `${(v * 100).toFixed(v < 0.1 ? 1 : 0)}%`;
    const perOp = (f) => h.operators.map((o, i) => line(o.name, (x) => (x.operators[i] ? f(x.operators[i]) : null)));
    $("#charts").innerHTML = [
      chart("Records per second", [line("in (sources)", (x) => x.input_per_s), line("out (sinks)", (x) => x.output_per_s)], num),
      chart("End-to-end latency", [line("p50", (x) => x.latency_p50_ms), line("p99", (x) => x.latency_p99_ms)], ms),
      chart("Event-time lag", [line("now − sink watermark", (x) => x.event_time_lag_ms)], ms),
      chart("Kafka consumer lag", [line("records behind", (x) => x.source_lag)], num),
      chart("Checkpoint duration", [line("latest completed", (x) => x.checkpoint_ms)], ms),
      chart("Checkpoint size", [line("latest completed", (x) => x.checkpoint_bytes)], bytes),
      chart("Busy per operator", perOp((o) => o.busy), pct),
      chart("Backpressure per operator", perOp((o) => o.backpressure), pct),
    ].join("");
  }

  // ---- per-subtask drill-down ---------------------------------------------------------

  function drawSubtasks(op) {
    $("#subtasks-section").hidden = false;
    $("#subtasks-name").textContent = `${op.name} (×${op.parallelism})`;
    const pct = (v) => `${(v * 100).toFixed(0)}%`;
    $("#subtasks tbody").innerHTML = op.subtasks
      .map(
        (t) => `<tr data-subtask="${t.subtask}"><td class="n">${t.subtask}</td><td class="n">${num(t.records_in)}</td><td class="n">${num(t.in_per_s)}</td>
<td class="n">${num(t.records_out)}</td><td class="n">${num(t.out_per_s)}</td><td class="n">${pct(t.busy)}</td><td class="n">${pct(t.backpressure)}</td>
<td class="n">${num(t.input_queue)}</td><td>${t.watermark_ms != null ? new Date(t.watermark_ms).toISOString().replace("T", " ").slice(0, 23) : "–"}</td>
<td class="n">${t.source_lag != null ? num(t.source_lag) : "–"}</td><td class="n">${t.latency_p99_ms != null ? ms(t.latency_p99_ms) : "–"}</td>
<td class="n">${num(t.dead_letters)}</td><td class="n">${num(t.late_records)}</td>
<td class="n state">${t.state_bytes != null ? bytes(t.state_bytes) : "–"}</td><td class="splits">${(t.splits || []).map((x) => `${esc(x.name ?? `split ${x.split}`)}: ${x.watermark_ms != null ? new Date(x.watermark_ms).toISOString().slice(11, 23) : "–"}${x.idle ? " (idle)" : ""}`).join("<br>") || "–"}</td></tr>`
      )
      .join("");
  }

  function job(id) {
    let selected = null;
    const select = (op) => {
      selected = op;
      for (const tr of document.querySelectorAll("tr[data-operator]")) tr.classList.toggle("selected", tr.dataset.operator === String(op));
    };
    const pick = (e) => {
      const el = e.target.closest("[data-operator], [data-node]");
      if (el) select(el.dataset.operator ?? el.dataset.node);
    };
    $("#operators").addEventListener("click", pick);
    $("#graph").addEventListener("click", pick);
    poll(async () => {
      const j = await api("GET", `/api/jobs/${id}`);
      drawJob(j, rates(j));
      if (selected != null) select(selected);
    });
    poll(async () => drawCharts(await api("GET", `/api/jobs/${id}/history`)), 2000);
    poll(async () => {
      const d = await api("GET", `/api/jobs/${id}/diagnosis`);
      $("#diagnosis-summary").textContent = d.causes.length ? `${d.causes.length} likely cause(s) in the last ${d.seconds} s:` : d.summary;
      $("#diagnosis").innerHTML = d.causes
        .map(
          (c) => `<li class="cause" data-kind="${esc(c.kind)}"><span class="badge">${esc(c.kind)} ${c.score.toFixed(2)}</span> <b>${esc(c.title)}</b>
<ul>${c.evidence.map((e) => `<li>${esc(e)}</li>`).join("")}</ul><p class="action">What to do: ${esc(c.action)}</p></li>`
        )
        .join("");
    }, 2000);
    poll(async () => {
      if (selected != null) drawSubtasks(await api("GET", `/api/jobs/${id}/operators/${selected}`));
    });
    // A cluster instance: every instance of its cluster, from the consumer group.
    poll(async () => {
      const j = await api("GET", `/api/jobs/${id}`);
      if (!j.cluster) return;
      $("#cluster-section").hidden = false;
      $("#cluster-name").textContent = j.cluster;
      try {
        const c = await api("GET", `/api/jobs/${id}/cluster`);
        $("#cluster-state").textContent = `group ${c.group}: ${c.state}, ${c.instances.length} instance(s), lag ${num(c.total_lag)}${c.others.length ? `, ${c.others.length} other member(s)` : ""}`;
        $("#cluster tbody").innerHTML = c.instances
          .map(
            (i) => `<tr><td>${esc(i.instance)}</td><td>${esc(i.host)}</td><td class="n">${i.subtasks}</td>
<td>${esc(i.partitions.join(", "))}</td><td class="n">${num(i.lag)}</td>
<td>${esc(i.tasks.join(", ")) || "–"}</td><td class="n">${i.tasks.length ? num(i.task_lag) : "–"}</td>
<td class="n">${i.tasks.length ? bytes(i.state_bytes) : "–"}</td><td>${rebalance(i.last_rebalance)}</td></tr>`
          )
          .join("");
      } catch (e) {
        $("#cluster-state").textContent = e.message;
      }
    }, 2000);
    poll(async () => {
      const cps = await api("GET", `/api/jobs/${id}/checkpoints`);
      $("#checkpoints tbody").innerHTML = cps
        .slice()
        .reverse()
        .map(
          (c) => `<tr><td>${c.epoch}</td><td>${esc(c.kind)}</td><td>${esc(c.status)}</td><td>${time(c.triggered_at_ms)}</td>
<td class="n">${ms(c.duration_ms)}</td><td class="n">${bytes(c.state_bytes || 0)}</td><td><code>${esc(c.location)}</code></td></tr>`
        )
        .join("");
    }, 2000);
    const act = (sel, f) =>
      $(sel).addEventListener("click", async () => {
        $("#action-result").textContent = "…";
        try {
          $("#action-result").textContent = await f();
        } catch (e) {
          $("#action-result").textContent = e.message;
        }
      });
    act("#cancel", async () => (await api("POST", `/api/jobs/${id}/cancel`), "cancelling"));
    act("#savepoint", async () => `savepoint at ${(await api("POST", `/api/jobs/${id}/savepoint`, { stop: false })).location}`);
    act("#stop-savepoint", async () => `stopped; savepoint at ${(await api("POST", `/api/jobs/${id}/savepoint`, { stop: true })).location}`);
  }

  // ---- log finder -----------------------------------------------------------------------

  function logs(id) {
    const tasks = new Set();
    const query = () => {
      const p = new URLSearchParams();
      const level = $("#errors-only").checked ? "error" : $("#level").value;
      if (level) p.set("level", level);
      if ($("#task").value) p.set("task", $("#task").value);
      if ($("#q").value) p.set("q", $("#q").value);
      p.set("limit", "500");
      return p.toString();
    };
    const load = async () => {
      const entries = await api("GET", `/api/jobs/${id}/logs?${query()}`);
      for (const e of entries) {
        if (e.task && !tasks.has(e.task)) {
          tasks.add(e.task);
          $("#task").insertAdjacentHTML("beforeend", `<option value="${esc(e.task)}">${esc(e.task)}</option>`);
        }
      }
      $("#log-count").textContent = `${entries.length} event(s), newest last`;
      $("#logs").innerHTML = entries
        .map(
          (e) => `<div class="log ${esc(e.level)}"><span class="t">${new Date(e.time_ms).toISOString().slice(11, 23)}</span>
<span class="lvl">${esc(e.level)}</span><span class="task">${esc(e.task)}</span><span class="msg">${esc(e.message)}</span>
${e.trace ? `<pre class="trace">${esc(e.trace)}</pre>` : ""}</div>`
        )
        .join("");
    };
    const params = new URLSearchParams(location.search);
    if (params.get("level") === "error") $("#errors-only").checked = true;
    $("#log-filter").addEventListener("submit", (ev) => {
      ev.preventDefault();
      load().catch((e) => ($("#log-count").textContent = e.message));
    });
    for (const sel of ["#errors-only", "#level", "#task"]) $(sel).addEventListener("change", () => load().catch(() => {}));
    poll(load, 2000);
  }

  return { overview, job, logs, api };
})();
