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
      (byNode[r.node_name] = byNode[r.node_name] || { x: [], y: [] });
      byNode[r.node_name].x.push(r.round);
      byNode[r.node_name].y.push(r.accuracy);
    }
    const out = [
      { name: "mean accuracy", x: rounds.map(r => r.round), y: rounds.map(r => r.mean_accuracy),
        mode: "lines+markers", line: { width: 3, color: "#2456c9" } },
      { name: "mean loss", x: rounds.map(r => r.round), y: rounds.map(r => r.mean_loss),
        mode: "lines+markers", yaxis: "y2", line: { dash: "dot", color: "#b3261e" } },
    ];
    for (const [name, pts] of Object.entries(byNode)) {
      out.push({ name: name + " accuracy", x: pts.x, y: pts.y, mode: "markers", marker: { size: 7, opacity: 0.6, color: PEER_COLOURS[out.length % PEER_COLOURS.length] } });
    }
    return out;
  }

  function render() {
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
    renderPayouts();
    renderEscrow();
    renderPrivacy();
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

  function apply(msg) {
    if (msg.kind === "snapshot") Object.assign(state, msg.data);
    else if (msg.kind === "report") state.reports.push(msg.data);
    else if (msg.kind === "round") {
      state.closed_rounds = state.closed_rounds.filter(r => r.round !== msg.data.round);
      state.closed_rounds.push(msg.data);
    } else if (msg.kind === "status") {
      state.status = msg.data.status;
      state.current_round = msg.data.current_round;
      if (msg.data.cohort) state.cohort = msg.data.cohort;
      if (msg.data.payouts) state.payouts = msg.data.payouts;
      if ("escrow" in msg.data) state.escrow = msg.data.escrow;
    } else if (msg.kind === "node") {
      for (const m of state.cohort || []) if (m.node === msg.data.node) m.online = msg.data.online;
    }
    render();
    chart.dataset.updates = String(Number(chart.dataset.updates || 0) + 1);
  }

  let delay = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/jobs/" + state.job + "/");
    socket.onopen = () => { liveState.textContent = "Live: updates appear as peers report."; delay = 1000; };
    socket.onmessage = (e) => apply(JSON.parse(e.data));
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
