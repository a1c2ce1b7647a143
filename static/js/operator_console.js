// The operator console: every node of the logged-in user, live from /ws/operator/.
(function () {
  "use strict";
  const state = JSON.parse(document.getElementById("console-snapshot").textContent);
  const body = document.getElementById("console-nodes");
  const liveState = document.getElementById("console-state");
  const nodes = new Map(state.nodes.map(n => [n.node, n]));

  function fmt(v, digits, unit) { return v == null ? "–" : Number(v).toFixed(digits) + (unit || ""); }
  function bytes(v) {
    if (v == null) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return v.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function row(n) {
    let tr = body.querySelector(`tr[data-node="${n.node}"]`);
    if (!tr) {
      tr = body.insertRow();
      tr.dataset.node = n.node;
      for (let i = 0; i < 11; i++) tr.insertCell();
      const a = document.createElement("a");
      a.href = "/nodes/" + n.node + "/";
      a.textContent = n.name;
      tr.cells[0].appendChild(a);
    }
    return tr;
  }

  function render(n) {
    const tr = row(n), s = n.stats || {};
    const badge = document.createElement("span");
    badge.className = "badge " + n.status;
    badge.textContent = n.status;
    tr.cells[1].replaceChildren(badge);
    tr.cells[2].textContent = s.job != null ? "job " + s.job + " / round " + s.round : "–";
    tr.cells[3].textContent = fmt(s.steps_per_s, 1);
    tr.cells[4].textContent = fmt(s.cpu_percent, 0, " %");
    tr.cells[5].textContent = s.ram_used_gb != null ? fmt(s.ram_used_gb, 1, " GB") + " (" + fmt(s.ram_percent, 0, " %") + ")" : "–";
    tr.cells[6].textContent = s.gpu_util != null ? fmt(s.gpu_util, 0, " %") + ", " + fmt(s.gpu_mem_used_gb, 1) + " / " + fmt(s.gpu_mem_total_gb, 1) + " GB" : "–";
    tr.cells[7].textContent = bytes(s.bytes_sent) + " / " + bytes(s.bytes_received);
    tr.cells[8].textContent = s.last_error || "";
    tr.cells[8].className = s.last_error ? "error" : "";
    tr.cells[9].textContent = n.earnings;
    for (const cls of [3, 4, 5, 6, 7, 9]) tr.cells[cls].className = "num";
    tr.dataset.status = n.status;
  }

  function renderAll() { for (const n of nodes.values()) render(n); }

  let delay = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/operator/");
    socket.onopen = () => { liveState.textContent = "Live: rows update with every heartbeat."; delay = 1000; };
    socket.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.kind === "snapshot") { for (const n of msg.data.nodes) nodes.set(n.node, n); }
      else if (msg.kind === "node") nodes.set(msg.data.node, msg.data);
      renderAll();
      body.dataset.updates = String(Number(body.dataset.updates || 0) + 1);
    };
    socket.onclose = (e) => {
      if (e.code === 4403) { liveState.textContent = "Log in to watch your nodes."; return; }
      liveState.textContent = "Disconnected; reconnecting…";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  // A node whose heartbeats stop goes stale, then offline, without a frame: age the rows here.
  setInterval(() => {
    const now = Date.now();
    for (const n of nodes.values()) {
      const seen = n.last_seen ? Date.parse(n.last_seen) : 0, statsAt = n.stats_at ? Date.parse(n.stats_at) : 0;
      if (n.status !== "offline" && now - seen > state.online_s * 1000) n.status = "offline";
      else if (n.status !== "offline" && n.status !== "stale" && now - statsAt > 1.5 * state.beat_s * 1000) n.status = "stale";
      render(n);
    }
  }, 5000);
  renderAll();
  connect();
})();
