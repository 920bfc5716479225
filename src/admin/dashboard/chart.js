// The geometry of the `Usage, last 30 days` bar chart: scale and bars, no DOM (the details
// screen draws them as SVG rectangles, whose geometry is attributes and so needs no style).

/** The smallest 1, 2, 2.5 or 5 × 10^k at or above `n` (at least 1): the chart's top line. */
export function niceMax(n) {
  const v = Math.max(1, Number(n) || 0);
  const magnitude = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= v) return step * magnitude;
  }
  return 10 * magnitude;
}

/**
 * Bars for `days` (`[{date, requests}]`, oldest first) in a `width` × `height` box: each bar's
 * `x`, `y`, `width`, `height`, with `max` (the top line) and `total` (all requests).
 */
export function usageBars(days, { width = 600, height = 160, gap = 2 } = {}) {
  const list = days ?? [];
  const total = list.reduce((sum, d) => sum + (Number(d.requests) || 0), 0);
  const peak = list.reduce((m, d) => Math.max(m, Number(d.requests) || 0), 0);
  const max = niceMax(peak);
  const slot = list.length ? width / list.length : width;
  const barWidth = Math.max(1, slot - gap);
  const bars = list.map((d, i) => {
    const requests = Number(d.requests) || 0;
    const h = (requests / max) * height;
    return {
      date: d.date,
      requests,
      x: +(i * slot + gap / 2).toFixed(2),
      y: +(height - h).toFixed(2),
      width: +barWidth.toFixed(2),
      height: +h.toFixed(2),
    };
  });
  return { max, total, peak, bars };
}
