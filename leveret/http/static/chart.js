// Leveret's charts: line charts drawn by hand as SVG (no library, no build step).
// LeveretChart.draw(svg, series) with series = [{label, color, points: [[timestamp_ms, value], ...]}].
"use strict";

const LeveretChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 220, LEFT = 48, RIGHT = 10, TOP = 10, BOTTOM = 44;

  function node(tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function nice(max) {
    if (max <= 0) return 1;
    const step = 10 ** Math.floor(Math.log10(max));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
    return 10 * step;
  }

  function format(value) {
    if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
  }

  function draw(svg, series) {
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const all = series.flatMap((s) => s.points);
    const children = [];
    const plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
    if (all.length < 2) {
      children.push(node("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted"},
        "collecting samples…"));
      svg.replaceChildren(...children);
      return;
    }
    const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
    const top = nice(Math.max(...all.map((p) => p[1])));
    const x = (t) => LEFT + (t1 === t0 ? 0 : (t - t0) / (t1 - t0) * plotW);
    const y = (v) => TOP + plotH - v / top * plotH;
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4;
      children.push(node("line", {x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v), class: "grid"}));
      children.push(node("text", {x: LEFT - 6, y: y(v) + 4, "text-anchor": "end", class: "axis"}, format(v)));
    }
    children.push(node("text", {x: LEFT, y: TOP + plotH + 16, class: "axis"}, clock(t0)));
    children.push(node("text", {x: W - RIGHT, y: TOP + plotH + 16, "text-anchor": "end", class: "axis"}, clock(t1)));
    let legendX = LEFT;
    for (const s of series) {
      const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
      if (sorted.length) {
        const d = sorted.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
        children.push(node("path", {d, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": s.label}));
      }
      const last = sorted.length ? sorted[sorted.length - 1][1] : 0;
      children.push(node("rect", {x: legendX, y: H - 14, width: 10, height: 10, fill: s.color}));
      const label = node("text", {x: legendX + 14, y: H - 5, class: "legend"}, `${s.label} ${format(last)}`);
      children.push(label);
      legendX += 14 + 8 * (s.label.length + format(last).length + 2);
    }
    svg.replaceChildren(...children);
  }

  // RabbitMQ's samples (newest first, cumulative counters) as per-second rates between neighbouring samples
  function rates(samples) {
    const points = [];
    for (let i = 0; i + 1 < (samples || []).length; i++) {
      const a = samples[i], b = samples[i + 1];
      const seconds = (a.timestamp - b.timestamp) / 1000;
      if (seconds > 0) points.push([a.timestamp, Math.max(0, (a.sample - b.sample) / seconds)]);
    }
    return points;
  }

  function values(samples) {
    return (samples || []).map((s) => [s.timestamp, s.sample]);
  }

  return {draw, rates, values};
})();
