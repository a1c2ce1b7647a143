// Live chart of a job: loss and accuracy per round, fed by /ws/jobs/<id>/.
(function () {
  "use strict";
  const state = JSON.parse(document.getElementById("job-snapshot").textContent);
  const chart = document.getElementById("chart");
  const liveState = document.getElementById("live-state");
  const STATUS_LABELS = { draft: "Draft", waiting: "Recruiting", running: "Running", finished: "Completed, settling",
                          settled: "Completed", failed: "Failed", cancelled: "Cancelled" };

  const PEER_COLOURS = ["#5b8def", "#2aa198", "#8e6bd6", "#d69a2d", "#4f9d5d", "#6c7a89", "#c26fb0", "#3fb1c9"];

  function traces() {
    const rounds = state.closed_rounds.slice().sort((a, b) => a.round - b.round);
    const byNode = {};
    for (const r of state.reports) {
      if (r.diverged) continue;  // its numbers mean nothing
      (byNode[r.node_name] = byNode[r.node_name] || { x: [], y: [], loss: [] });
      byNode[r.node_name].x.push(r.round);
      byNode[r.node_name].y.push(r.accuracy);
      byNode[r.node_name].loss.push(r.eval_loss);
    }
    const out = [
      { name: "mean accuracy", x: rounds.map(r => r.round), y: rounds.map(r => r.mean_accuracy),
        mode: "lines+markers", line: { width: 3, color: "#2456c9" } },
      { name: "mean loss", x: rounds.map(r => r.round), y: rounds.map(r => r.mean_loss),
        mode: "lines+markers", yaxis: "y2", line: { dash: "dot", color: "#b3261e" } },
    ];
    for (const [name, pts] of Object.entries(byNode)) {
      const color = PEER_COLOURS[out.length % PEER_COLOURS.length];
      out.push({ name: name + " accuracy", x: pts.x, y: pts.y, mode: "markers", legendgroup: name, marker: { size: 7, opacity: 0.6, color } });
      out.push({ name: name + " loss", x: pts.x, y: pts.loss, mode: "markers", yaxis: "y2", legendgroup: name, showlegend: false,
                 marker: { size: 6, opacity: 0.5, symbol: "x", color } });
    }
    return out;
  }

  // What the server drew for the state the page was loaded in: the recruiting line, the cancel
  // button and the consent forms go once the job moves past them (no reload needed).
  function renderLifecycle() {
    // style.display, not the hidden attribute: the site's CSS sets display on .card and .inline.
    const open = ["draft", "waiting", "running"].includes(state.status);
    const recruiting = document.getElementById("recruiting");
    if (recruiting && state.status !== "waiting") recruiting.style.display = "none";
    if (recruiting && state.recruiting) {  // consents and nodes coming online, as they happen
      for (const key of ["consented", "online"]) {
        const el = recruiting.querySelector(`[data-recruiting="${key}"]`);
        if (el) el.textContent = String(state.recruiting[key]);
      }
    }
    const cancel = document.getElementById("cancel-job");
    if (cancel && !open) cancel.closest("form").style.display = "none";
    // Publishing, editing the terms and depositing the budget are for a draft or recruiting job.
    const publish = document.getElementById("publish-job");
    if (publish && state.status !== "draft") publish.closest("form").style.display = "none";
    const edit = document.getElementById("edit-job");
    if (edit && !["draft", "waiting"].includes(state.status)) edit.style.display = "none";
    const deposit = document.getElementById("escrow-deposit");
    if (deposit && state.status !== "waiting") deposit.style.display = "none";
    if (!open) {
      for (const form of document.querySelectorAll("form[action$='/consent/']")) form.style.display = "none";
    }
  }

  function render() {
    renderLifecycle();
    Plotly.react(chart, traces(), {
      margin: { t: 20, r: 60, b: 40, l: 50 },
      // At most about 10 round labels, whole rounds only: many rounds' labels would collide.
      xaxis: { title: { text: "round" }, tickmode: "linear", tick0: 1, dtick: Math.max(1, Math.ceil(state.rounds / 10)),
               tickformat: "d", range: [0.5, state.rounds + 0.5] },
      yaxis: { title: { text: "accuracy" }, range: [0, 1] },
      yaxis2: { title: { text: "loss" }, overlaying: "y", side: "right", rangemode: "tozero",
                nticks: 6, tickformat: ".2f", showgrid: false },
      legend: { orientation: "h", y: -0.2 },
    }, { displayModeBar: false, responsive: true });
    const last = state.closed_rounds[state.closed_rounds.length - 1];
    document.getElementById("job-accuracy").textContent =
      last && last.mean_accuracy != null ? (100 * last.mean_accuracy).toFixed(1) + " %" : "–";
    document.getElementById("job-round").textContent = state.current_round + " / " + state.rounds;
    const badge = document.getElementById("job-status");
    badge.textContent = STATUS_LABELS[state.status] || state.status;
    badge.className = "badge " + state.status;
    renderPeers();
    renderRoundCharts();
    renderTopology();
    renderEvents();
    renderPayouts();
    renderEscrow();
    renderPrivacy();
  }

  const PLOT_CONFIG = { displayModeBar: false, responsive: true };
  function smallLayout(title, extra) {
    return Object.assign({ margin: { t: 30, r: 50, b: 30, l: 50 }, title: { text: title, font: { size: 14 } },
                           legend: { orientation: "h", y: -0.15 }, xaxis: { dtick: 1 } }, extra || {});
  }

  function byRound() {
    const rounds = {};
    for (const r of state.reports) (rounds[r.round] = rounds[r.round] || []).push(r);
    return Object.keys(rounds).map(Number).sort((a, b) => a - b).map(n => [n, rounds[n]]);
  }

  function spread(values) {
    if (values.length < 2) return 0;
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    return Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / values.length);
  }

  // Consensus (how far apart the peers are), bytes on the wire, round duration and stragglers.
  function renderRoundCharts() {
    const rounds = byRound(), x = rounds.map(([n]) => n);
    const ok = (rs) => rs.filter(r => !r.diverged);
    const mean = (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);
    Plotly.react("chart-consensus", [
      { name: "accuracy spread (std)", x, y: rounds.map(([, rs]) => spread(ok(rs).map(r => r.accuracy))), mode: "lines+markers" },
      { name: "mean distance moved by mixing (L2)", x, y: rounds.map(([, rs]) => mean(ok(rs).map(r => r.consensus_distance || 0))),
        mode: "lines+markers" },
      { name: "distinct models", x, y: rounds.map(([, rs]) => new Set(rs.map(r => r.model_hash)).size), mode: "lines+markers",
        yaxis: "y2", line: { dash: "dot" } },
    ], smallLayout("consensus between peers", { yaxis: { rangemode: "tozero" },
      yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, dtick: 1 } }), PLOT_CONFIG);
    const sent = rounds.map(([, rs]) => rs.reduce((a, r) => a + (r.bytes_sent || 0), 0));
    const received = rounds.map(([, rs]) => rs.reduce((a, r) => a + (r.bytes_received || 0), 0));
    Plotly.react("chart-bytes", [
      { name: "sent", x, y: sent, type: "bar" },
      { name: "received", x, y: received, type: "bar" },
      { name: "compression ratio", x, yaxis: "y2", mode: "lines+markers", line: { color: "#8e6bd6" },
        y: rounds.map(([, rs], i) => { const dense = rs.reduce((a, r) => a + (r.model_bytes || 0), 0);
                                        return dense && sent[i] ? dense / sent[i] : null; }) },
    ], smallLayout("bytes on the wire per round", { barmode: "group",
      yaxis: { rangemode: "tozero", tickformat: ".2s", ticksuffix: "B" },
      yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, ticksuffix: "×" } }), PLOT_CONFIG);
    const traces = [{ name: "slowest peer (s)", x, y: rounds.map(([, rs]) => Math.max(...rs.map(r => r.duration_s || 0))),
                      mode: "lines+markers" }];
    const closed = state.closed_rounds.filter(r => r.seconds != null).sort((a, b) => a.round - b.round);
    traces.push({ name: "round open (s)", x: closed.map(r => r.round), y: closed.map(r => r.seconds), mode: "lines", line: { dash: "dot" } });
    // Stragglers: a peer that took over 1.5x the round's median, or did not report at all.
    const slow = { x: [], y: [], text: [] };
    for (const [n, rs] of rounds) {
      const times = rs.map(r => r.duration_s || 0).sort((a, b) => a - b), median = times[Math.floor(times.length / 2)];
      for (const r of rs) if (rs.length > 1 && r.duration_s > 1.5 * median) { slow.x.push(n); slow.y.push(r.duration_s); slow.text.push(r.node_name); }
    }
    traces.push({ name: "stragglers", x: slow.x, y: slow.y, text: slow.text, mode: "markers", marker: { size: 10, color: "#b3261e", symbol: "triangle-up" } });
    Plotly.react("chart-duration", traces, smallLayout("round duration and stragglers", { yaxis: { rangemode: "tozero", title: { text: "s" } } }), PLOT_CONFIG);
  }

  // The cohort on a circle; this round's links grey, links that rejected weights orange, cut links red dashed.
  function renderTopology() {
    const cohort = (state.cohort || []).slice().sort((a, b) => a.position - b.position);
    const topo = state.topology || { links: [], cut: [] };
    const pos = {};
    cohort.forEach((m, i) => {
      const angle = 2 * Math.PI * i / Math.max(cohort.length, 1);
      pos[m.node] = [Math.cos(angle), Math.sin(angle)];
    });
    const rejected = new Set();
    for (const r of state.reports) if (r.round === topo.round) for (const x of r.rejected || []) rejected.add([r.node, x.sender].sort((a, b) => a - b).join("-"));
    const edges = (pairs, style, name) => {
      const x = [], y = [];
      for (const [a, b] of pairs) if (pos[a] && pos[b]) { x.push(pos[a][0], pos[b][0], null); y.push(pos[a][1], pos[b][1], null); }
      return { name, x, y, mode: "lines", line: style, hoverinfo: "skip" };
    };
    const key = (p) => p.slice().sort((a, b) => a - b).join("-");
    const cut = new Set((topo.cut || []).map(key));
    const carried = topo.links.filter(p => !cut.has(key(p)) && !rejected.has(key(p)));
    const refused = topo.links.filter(p => rejected.has(key(p)));
    Plotly.react("chart-topology", [
      edges(carried, { color: "#8a96a8", width: 2 }, "carried weights"),
      edges(refused, { color: "#d69a2d", width: 2 }, "weights rejected"),
      edges(topo.cut || [], { color: "#b3261e", width: 2, dash: "dash" }, "cut"),
      { name: "peers", x: cohort.map(m => pos[m.node][0]), y: cohort.map(m => pos[m.node][1]), text: cohort.map(m => m.name),
        mode: "markers+text", textposition: "top center", marker: { size: 14, color: cohort.map(m => (m.online ? "#1c7c43" : "#b3261e")) } },
    ], smallLayout("links, round " + (topo.round || "–"), { showlegend: true, xaxis: { visible: false, range: [-1.5, 1.5] },
      yaxis: { visible: false, range: [-1.4, 1.4], scaleanchor: "x" } }), PLOT_CONFIG);
  }

  // The event log: the snapshot's lines, plus what live frames add (keyed: none shows twice).
  function renderEvents() {
    const names = {};
    for (const m of state.cohort || []) names[m.node] = m.name;
    const events = new Map((state.events || []).map(e => [e.key, e]));
    const add = (e) => { if (!events.has(e.key)) events.set(e.key, e); };
    for (const r of state.reports) {
      (r.rejected || []).forEach((x, i) => add({ key: "reject:" + r.round + ":" + r.node + ":" + i, at: null, kind: "rejection",
        text: "round " + r.round + ": " + r.node_name + " rejected " + (names[x.sender] || "node " + x.sender) + "'s weights: " + x.reason }));
    }
    for (const rnd of state.closed_rounds) {
      const reported = new Set(state.reports.filter(r => r.round === rnd.round).map(r => r.node));
      for (const n of rnd.members || []) if (!reported.has(n))
        add({ key: "miss:" + rnd.round + ":" + n, at: null, kind: "drop", text: "round " + rnd.round + ": " + (names[n] || n) + " did not report" });
    }
    for (const p of state.payouts || []) if (p.status === "confirmed")
      add({ key: "payout:" + p.round + ":" + p.node, at: null, kind: "payout", text: "round " + p.round + ": " + p.node_name + " paid " + p.amount + " tokens" });
    for (const e of state.liveEvents || []) add(e);
    const list = document.getElementById("event-log");
    list.replaceChildren();
    const all = Array.from(events.values());
    for (const e of all.reverse()) {
      const li = document.createElement("li");
      li.dataset.kind = e.kind;
      li.textContent = (e.at ? new Date(e.at).toLocaleTimeString() + " " : "") + e.text;
      list.appendChild(li);
    }
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    if (className) td.className = className;
    td.textContent = text == null ? "" : String(text);
    return td;
  }

  function badgeCell(row, text, className) {
    const span = document.createElement("span");
    span.className = "badge " + className;
    span.textContent = text;
    row.insertCell().appendChild(span);
  }

  // Who trains in the job, who is online, and which peers the open round still waits for.
  function renderPeers() {
    const cohort = (state.cohort || []).slice().sort((a, b) => a.position - b.position);
    document.getElementById("peers-section").hidden = cohort.length === 0;
    const thisRound = state.reports.filter(r => r.round === state.current_round);
    const reported = new Set(thisRound.map(r => r.node));
    const diverged = new Set(thisRound.filter(r => r.diverged).map(r => r.node));
    const running = state.status === "running";
    const body = document.getElementById("peers");
    body.replaceChildren();
    const missing = [];
    for (const m of cohort) {
      const row = body.insertRow();
      row.dataset.node = m.node;
      cell(row, m.position);
      cell(row, m.name);
      cell(row, m.operator);
      badgeCell(row, m.online ? "online" : "offline", m.online ? "online" : "offline");
      if (!running) cell(row, "–");
      else if (!m.consent) cell(row, "consent revoked");
      else if (diverged.has(m.node)) badgeCell(row, "diverged", "failed");
      else if (reported.has(m.node)) badgeCell(row, "reported", "online");
      else {
        cell(row, "waiting");
        missing.push(m.name + (m.online ? "" : " (offline)"));
      }
    }
    document.getElementById("waiting-on").textContent = running && missing.length
      ? "Round " + state.current_round + " is waiting for " + missing.join(", ") + "." : "";
  }

  // The most privacy any peer reports having spent (shown only for jobs with DP on).
  function renderPrivacy() {
    const card = document.getElementById("job-epsilon");
    if (!card) return;
    const spent = state.reports.map(r => r.epsilon || 0);
    card.textContent = spent.length ? Math.max(...spent).toFixed(2) : "–";
  }

  function renderEscrow() {
    const box = document.getElementById("escrow");
    if (!box || !state.escrow) return;
    for (const key of ["status", "budget", "committed", "paid", "refunded", "burnt"]) {
      const el = box.querySelector(`[data-escrow="${key}"]`);
      if (el) el.textContent = state.escrow[key];
    }
  }

  function renderPayouts() {
    const payouts = state.payouts || [];
    document.getElementById("payouts-section").hidden = payouts.length === 0;
    const body = document.getElementById("payouts");
    body.replaceChildren();
    for (const p of payouts) {
      const row = body.insertRow();
      cell(row, p.round, "num");
      cell(row, p.node_name);
      cell(row, p.amount, "num");
      cell(row, (p.score_ppm / 10000).toFixed(2) + " %", "num");
      badgeCell(row, p.status, p.status);
      cell(row, p.tx_hash, "mono");
      cell(row, p.block_number, "num");
    }
  }

  // Sequence numbers: the snapshot says which frame it is current to; an older or repeated frame
  // is dropped, a gap asks for a new snapshot (frames meanwhile wait, then apply past it).
  let lastSeq = null, resyncing = false, waiting = [];
  function receive(socket, msg) {
    if (msg.kind === "snapshot") {
      state.liveEvents = [];
      apply(msg);
      lastSeq = msg.seq;
      resyncing = false;
      const later = waiting.filter(m => m.seq > lastSeq).sort((a, b) => a.seq - b.seq);
      waiting = [];
      for (const m of later) receive(socket, m);
      return;
    }
    if (resyncing || lastSeq === null) { waiting.push(msg); return; }
    if (msg.seq <= lastSeq) return;
    if (msg.seq > lastSeq + 1) {
      resyncing = true;
      waiting.push(msg);
      socket.send(JSON.stringify({ type: "snapshot" }));
      setTimeout(() => { if (resyncing) socket.close(); }, 3000);  // no answer: reconnect
      return;
    }
    lastSeq = msg.seq;
    apply(msg);
  }

  function apply(msg) {
    if (msg.kind === "snapshot") Object.assign(state, msg.data);
    else if (msg.kind === "report") {
      state.reports = state.reports.filter(r => r.round !== msg.data.round || r.node !== msg.data.node);
      state.reports.push(msg.data);
      state.reports.sort((a, b) => a.round - b.round || a.node - b.node);
    } else if (msg.kind === "event") {
      (state.liveEvents = state.liveEvents || []).push(msg.data);
    } else if (msg.kind === "round") {
      state.closed_rounds = state.closed_rounds.filter(r => r.round !== msg.data.round);
      state.closed_rounds.push(msg.data);
    } else if (msg.kind === "status") {
      state.status = msg.data.status;
      state.current_round = msg.data.current_round;
      if (msg.data.cohort) state.cohort = msg.data.cohort;
      if (msg.data.payouts) state.payouts = msg.data.payouts;
      if ("escrow" in msg.data) state.escrow = msg.data.escrow;
      if (msg.data.topology) state.topology = msg.data.topology;
      if ("recruiting" in msg.data) state.recruiting = msg.data.recruiting;
    } else if (msg.kind === "node") {
      for (const m of state.cohort || []) {
        if (m.node !== msg.data.node) continue;
        m.online = msg.data.online;
        (state.liveEvents = state.liveEvents || []).push({ key: "node:" + msg.seq, at: new Date().toISOString(), kind: msg.data.online ? "join" : "drop",
          text: m.name + (msg.data.online ? " came online" : " went offline") });
      }
    }
    render();
    chart.dataset.updates = String(Number(chart.dataset.updates || 0) + 1);
  }

  let delay = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/jobs/" + state.job + "/");
    socket.onopen = () => { liveState.textContent = "Live: updates appear as peers report."; delay = 1000; };
    lastSeq = null; resyncing = false; waiting = [];  // a new connection starts from its snapshot
    socket.onmessage = (e) => receive(socket, JSON.parse(e.data));
    socket.onclose = (e) => {
      if (e.code === 4403) { liveState.textContent = "You may not watch this job."; return; }
      liveState.textContent = "Disconnected; reconnecting…";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  render();
  connect();
})();
