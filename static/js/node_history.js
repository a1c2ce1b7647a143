// A node's heartbeat stats over time (nodes.NodeSample): CPU, RAM and GPU use, steps per second.
(function () {
  "use strict";
  const history = JSON.parse(document.getElementById("node-history").textContent);
  if (!history.length) return;
  const at = history.map(s => s.at);
  const series = (key) => history.map(s => (s[key] == null ? null : s[key]));
  const layout = (title) => ({ margin: { t: 30, r: 20, b: 40, l: 50 }, title: { text: title, font: { size: 14 } },
                               legend: { orientation: "h", y: -0.25 }, yaxis: { rangemode: "tozero" } });
  const config = { displayModeBar: false, responsive: true };
  Plotly.newPlot("history-usage", [
    { name: "CPU %", x: at, y: series("cpu_percent"), mode: "lines" },
    { name: "RAM %", x: at, y: series("ram_percent"), mode: "lines" },
    { name: "GPU %", x: at, y: series("gpu_util"), mode: "lines" },
    { name: "GPU memory GB", x: at, y: series("gpu_mem_used_gb"), mode: "lines", yaxis: "y2", line: { dash: "dot" } },
  ], Object.assign(layout("use"), { yaxis: { range: [0, 100], title: { text: "%" } },
    yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false } }), config);
  Plotly.newPlot("history-speed", [
    { name: "steps/s", x: at, y: series("steps_per_s"), mode: "lines+markers" },
  ], layout("training steps per second"), config);
})();
