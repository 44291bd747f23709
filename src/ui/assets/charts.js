// Small SVG charts drawn here (no library): lines over the last hour, sparklines, horizontal bars,
// gauges. Labels are set as text nodes, never parsed as markup.

const NS = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#38bdf8', '#f472b6', '#a3e635', '#fbbf24', '#c084fc', '#fb7185', '#2dd4bf', '#f97316'];

export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An SVG path through `values` (null: a gap), scaled to width × height with `max` at the top. */
function pathOf(values, width, height, max, top = 0) {
  const step = values.length > 1 ? width / (values.length - 1) : width;
  let d = '';
  let drawing = false;
  values.forEach((value, index) => {
    if (value === null || value === undefined || !Number.isFinite(value)) {
      drawing = false;
      return;
    }
    const x = (index * step).toFixed(1);
    const y = (top + height - (Math.min(value, max) / max) * height).toFixed(1);
    const next = values[index + 1];
    const alone = !drawing && (next === null || next === undefined || !Number.isFinite(next));
    // A point between gaps: a dot (a very short segment with round caps), or it would not show.
    d += drawing ? `L${x} ${y} ` : alone ? `M${x} ${y} l0.01 0 ` : `M${x} ${y} `;
    drawing = true;
  });
  return d.trim();
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const factor of [1, 2, 2.5, 5, 10]) if (value <= factor * power) return factor * power;
  return 10 * power;
}

/**
 * A line chart: `series` [{name, values, color?}] of equal length (oldest first), `format` for the
 * y axis, `xLabels` [left, right].
 */
export function lineChart({ series, format = String, xLabels = ['-60 min', 'now'], title = '', integer = false }) {
  const width = 560;
  const height = 150;
  const left = 48;
  const top = 8;
  const plotWidth = width - left - 8;
  const plotHeight = height - top - 22;
  const peak = Math.max(0, ...series.flatMap((one) => one.values.filter((value) => Number.isFinite(value))));
  // Counts: an even maximum, so that the middle line is a whole number too.
  const max = integer ? Math.max(2, Math.ceil(niceMax(peak) / 2) * 2) : niceMax(peak);
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    class: 'chart',
    role: 'img',
    'aria-label': title,
  });
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotHeight - fraction * plotHeight;
    chart.append(
      svg('line', { x1: left, x2: width - 8, y1: y, y2: y, class: 'grid' }),
      svg('text', { x: left - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' }, format(fraction * max)),
    );
  }
  chart.append(
    svg('text', { x: left, y: height - 4, class: 'axis' }, xLabels[0]),
    svg('text', { x: width - 8, y: height - 4, class: 'axis', 'text-anchor': 'end' }, xLabels[1]),
  );
  const plot = svg('g', { transform: `translate(${left} 0)` });
  series.forEach((one, index) => {
    const path = svg('path', {
      d: pathOf(one.values, plotWidth, plotHeight, max, top),
      stroke: one.color ?? PALETTE[index % PALETTE.length],
      class: 'line',
    });
    path.append(svg('title', {}, one.name));
    plot.append(path);
  });
  chart.append(plot);
  return chart;
}

/** The names of `series` with their colours. */
export function legend(series) {
  const list = document.createElement('ul');
  list.className = 'legend';
  series.forEach((one, index) => {
    const item = document.createElement('li');
    const swatch = svg('svg', { width: 10, height: 10, class: 'swatch' });
    swatch.append(svg('rect', { width: 10, height: 10, rx: 2, fill: one.color ?? PALETTE[index % PALETTE.length] }));
    item.append(swatch, document.createTextNode(one.name));
    list.append(item);
  });
  return list;
}

/** A small line without axes, for table cells. */
export function sparkline(values, { width = 120, height = 22, color = PALETTE[0] } = {}) {
  const max = niceMax(Math.max(0, ...values.filter((value) => Number.isFinite(value))));
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'spark' });
  chart.append(svg('path', { d: pathOf(values, width, height - 2, max, 1), stroke: color, class: 'line' }));
  return chart;
}

/** A horizontal gauge of `ratio` (0…1, more is shown full), red from 1, amber from `warn`. */
export function gauge(ratio, { width = 120, warn = 0.8 } = {}) {
  const clamped = Math.max(0, Math.min(1, Number.isFinite(ratio) ? ratio : 0));
  const level = ratio >= 1 ? 'over' : ratio >= warn ? 'near' : 'ok';
  const chart = svg('svg', { viewBox: `0 0 ${width} 10`, width, height: 10, class: `gauge ${level}` });
  chart.append(
    svg('rect', { width, height: 10, rx: 3, class: 'track' }),
    svg('rect', { width: (clamped * width).toFixed(1), height: 10, rx: 3, class: 'fill' }),
  );
  return chart;
}

/** Horizontal bars: rows [{label, value, text}], the longest bar for the largest value. */
export function bars(rows, { width = 360 } = {}) {
  const rowHeight = 20;
  const labelWidth = 150;
  const max = Math.max(0, ...rows.map((row) => row.value)) || 1;
  const height = Math.max(1, rows.length) * rowHeight;
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: 'bars',
    role: 'img',
  });
  rows.forEach((row, index) => {
    const y = index * rowHeight;
    const label = row.label.length > 22 ? `${row.label.slice(0, 21)}…` : row.label;
    const text = svg('text', { x: 0, y: y + 14, class: 'label' }, label);
    text.append(svg('title', {}, row.label));
    const barWidth = ((row.value / max) * (width - labelWidth - 80)).toFixed(1);
    chart.append(
      text,
      svg('rect', {
        x: labelWidth,
        y: y + 4,
        width: barWidth,
        height: 12,
        rx: 2,
        fill: PALETTE[index % PALETTE.length],
      }),
      svg('text', { x: labelWidth + Number(barWidth) + 6, y: y + 14, class: 'value' }, row.text),
    );
  });
  return chart;
}
