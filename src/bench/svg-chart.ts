/**
 * A small SVG line-chart writer for the benchmark's latency-vs-load chart.
 * No dependency: a few panels side by side, linear or log axes, one shared
 * legend. Output is deterministic (same input, same bytes) so the committed
 * chart only changes when the figures do.
 */

export interface ChartPoint {
  x: number;
  y: number;
}

export interface ChartSeries {
  name: string;
  color: string;
  dashed?: boolean;
  points: ChartPoint[];
}

export interface ChartPanel {
  title: string;
  xLabel: string;
  yLabel: string;
  xScale?: 'linear' | 'log';
  yScale?: 'linear' | 'log';
  series: ChartSeries[];
}

export interface ChartOptions {
  title: string;
  subtitle?: string;
  panelWidth?: number;
  panelHeight?: number;
}

const MARGIN = { left: 64, right: 16, top: 34, bottom: 46 } as const;
const HEADER_HEIGHT = 52;
const LEGEND_ROW_HEIGHT = 20;

export function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

/** Rounds for SVG coordinates: two decimals, no trailing zeros, no "-0". */
function coordinate(value: number): string {
  const rounded = Math.round(value * 100) / 100;
  return String(Object.is(rounded, -0) ? 0 : rounded);
}

/** A "nice" step (1, 2 or 5 × 10^n) giving about `target` intervals over the span (the nearest, not the next larger). */
export function niceStep(span: number, target: number): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / Math.max(1, target);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / magnitude;
  const nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10;
  return nice * magnitude;
}

export function linearTicks(min: number, max: number, target = 5): number[] {
  const step = niceStep(max - min, target);
  const first = Math.floor(min / step) * step;
  const ticks: number[] = [];
  for (let value = first; value <= max + step * 1e-9; value += step) {
    ticks.push(Math.round(value / step) * step);
    if (ticks.length > 100) break;
  }
  if (ticks.length > 0 && ticks[ticks.length - 1]! < max) ticks.push(ticks[ticks.length - 1]! + step);
  return ticks;
}

/** Ticks at 1, 2, 5 × 10^n covering [min, max] (min > 0); only powers of ten when the range is wide. */
export function logTicks(min: number, max: number): number[] {
  const low = Math.floor(Math.log10(min));
  const high = Math.ceil(Math.log10(max));
  const multipliers = high - low > 3 ? [1] : [1, 2, 5];
  const ticks: number[] = [];
  for (let exponent = low; exponent <= high; exponent++) {
    for (const multiplier of multipliers) {
      const value = Number((multiplier * 10 ** exponent).toPrecision(12));
      if (value >= min / 1.0001 && value <= max * 1.0001) ticks.push(value);
    }
  }
  if (ticks.length < 2) return [10 ** low, 10 ** high];
  return ticks;
}

export function formatTick(value: number): string {
  if (value === 0) return '0';
  const absolute = Math.abs(value);
  if (absolute >= 1_000_000) return `${Number((value / 1_000_000).toPrecision(3))}M`;
  if (absolute >= 10_000) return `${Number((value / 1_000).toPrecision(3))}k`;
  if (absolute >= 1) return String(Number(value.toPrecision(4)));
  return String(Number(value.toPrecision(2)));
}

interface Axis {
  ticks: number[];
  project(value: number): number;
}

function buildAxis(values: number[], scale: 'linear' | 'log', pixelStart: number, pixelEnd: number): Axis {
  const finite = values.filter((value) => Number.isFinite(value) && (scale === 'linear' || value > 0));
  if (scale === 'log') {
    const low = finite.length === 0 ? 1 : Math.min(...finite);
    const high = finite.length === 0 ? 10 : Math.max(...finite);
    const bottom = 10 ** Math.floor(Math.log10(low));
    const top = 10 ** Math.ceil(Math.log10(high === bottom ? high * 10 : high));
    const ticks = logTicks(bottom, top);
    const logLow = Math.log10(bottom);
    const logHigh = Math.log10(top);
    return {
      ticks,
      project: (value) => pixelStart + ((Math.log10(value) - logLow) / (logHigh - logLow)) * (pixelEnd - pixelStart),
    };
  }
  const low = Math.min(0, ...finite);
  const high = finite.length === 0 ? 1 : Math.max(...finite);
  const ticks = linearTicks(low, high === low ? low + 1 : high);
  const first = ticks[0]!;
  const last = ticks[ticks.length - 1]!;
  return { ticks, project: (value) => pixelStart + ((value - first) / (last - first)) * (pixelEnd - pixelStart) };
}

function renderPanel(panel: ChartPanel, offsetX: number, offsetY: number, width: number, height: number): string {
  const plotLeft = offsetX + MARGIN.left;
  const plotRight = offsetX + width - MARGIN.right;
  const plotTop = offsetY + MARGIN.top;
  const plotBottom = offsetY + height - MARGIN.bottom;
  const allPoints = panel.series.flatMap((series) => series.points);
  const xAxis = buildAxis(allPoints.map((point) => point.x), panel.xScale ?? 'linear', plotLeft, plotRight);
  const yAxis = buildAxis(allPoints.map((point) => point.y), panel.yScale ?? 'linear', plotBottom, plotTop);
  const parts: string[] = [];
  parts.push(`<g class="panel">`);
  parts.push(
    `<text x="${coordinate((plotLeft + plotRight) / 2)}" y="${coordinate(offsetY + 20)}" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(panel.title)}</text>`,
  );
  for (const tick of yAxis.ticks) {
    const y = coordinate(yAxis.project(tick));
    parts.push(`<line x1="${coordinate(plotLeft)}" y1="${y}" x2="${coordinate(plotRight)}" y2="${y}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${coordinate(plotLeft - 6)}" y="${y}" text-anchor="end" dominant-baseline="middle" font-size="11">${escapeXml(formatTick(tick))}</text>`);
  }
  for (const tick of xAxis.ticks) {
    const x = coordinate(xAxis.project(tick));
    parts.push(`<line x1="${x}" y1="${coordinate(plotTop)}" x2="${x}" y2="${coordinate(plotBottom)}" stroke="#f0f0f0"/>`);
    parts.push(`<text x="${x}" y="${coordinate(plotBottom + 16)}" text-anchor="middle" font-size="11">${escapeXml(formatTick(tick))}</text>`);
  }
  parts.push(
    `<rect x="${coordinate(plotLeft)}" y="${coordinate(plotTop)}" width="${coordinate(plotRight - plotLeft)}" height="${coordinate(plotBottom - plotTop)}" fill="none" stroke="#888"/>`,
  );
  parts.push(
    `<text x="${coordinate((plotLeft + plotRight) / 2)}" y="${coordinate(plotBottom + 36)}" text-anchor="middle" font-size="12">${escapeXml(panel.xLabel)}</text>`,
  );
  const yLabelX = coordinate(offsetX + 16);
  const yLabelY = coordinate((plotTop + plotBottom) / 2);
  parts.push(
    `<text x="${yLabelX}" y="${yLabelY}" text-anchor="middle" font-size="12" transform="rotate(-90 ${yLabelX} ${yLabelY})">${escapeXml(panel.yLabel)}</text>`,
  );
  const yIsLog = (panel.yScale ?? 'linear') === 'log';
  const xIsLog = (panel.xScale ?? 'linear') === 'log';
  for (const series of panel.series) {
    const usable = series.points.filter(
      (point) => Number.isFinite(point.x) && Number.isFinite(point.y) && (!yIsLog || point.y > 0) && (!xIsLog || point.x > 0),
    );
    if (usable.length === 0) continue;
    const path = usable.map((point) => `${coordinate(xAxis.project(point.x))},${coordinate(yAxis.project(point.y))}`).join(' ');
    const dash = series.dashed === true ? ' stroke-dasharray="6 4"' : '';
    parts.push(`<polyline fill="none" stroke="${escapeXml(series.color)}" stroke-width="2"${dash} points="${path}"><title>${escapeXml(series.name)}</title></polyline>`);
    for (const point of usable) {
      parts.push(
        `<circle cx="${coordinate(xAxis.project(point.x))}" cy="${coordinate(yAxis.project(point.y))}" r="3" fill="${escapeXml(series.color)}"><title>${escapeXml(`${series.name}: ${formatTick(point.x)}, ${formatTick(point.y)}`)}</title></circle>`,
      );
    }
  }
  parts.push(`</g>`);
  return parts.join('\n');
}

/** Panels side by side under a title, with one legend listing every distinct series name. */
export function renderChart(panels: ChartPanel[], options: ChartOptions): string {
  const panelWidth = options.panelWidth ?? 480;
  const panelHeight = options.panelHeight ?? 340;
  const legend: ChartSeries[] = [];
  for (const series of panels.flatMap((panel) => panel.series)) {
    if (!legend.some((entry) => entry.name === series.name)) legend.push(series);
  }
  const width = Math.max(1, panels.length) * panelWidth;
  const legendColumns = Math.max(1, Math.floor(width / 230));
  const legendRows = Math.ceil(legend.length / legendColumns);
  const height = HEADER_HEIGHT + panelHeight + legendRows * LEGEND_ROW_HEIGHT + 12;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`);
  parts.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  parts.push(`<text x="${coordinate(width / 2)}" y="22" text-anchor="middle" font-size="16" font-weight="bold">${escapeXml(options.title)}</text>`);
  if (options.subtitle !== undefined) {
    parts.push(`<text x="${coordinate(width / 2)}" y="40" text-anchor="middle" font-size="11" fill="#555">${escapeXml(options.subtitle)}</text>`);
  }
  panels.forEach((panel, index) => parts.push(renderPanel(panel, index * panelWidth, HEADER_HEIGHT, panelWidth, panelHeight)));
  legend.forEach((series, index) => {
    const column = index % legendColumns;
    const row = Math.floor(index / legendColumns);
    const x = 24 + column * 230;
    const y = HEADER_HEIGHT + panelHeight + 6 + row * LEGEND_ROW_HEIGHT;
    const dash = series.dashed === true ? ' stroke-dasharray="6 4"' : '';
    parts.push(`<line x1="${x}" y1="${y + 6}" x2="${x + 28}" y2="${y + 6}" stroke="${escapeXml(series.color)}" stroke-width="2"${dash}/>`);
    parts.push(`<text x="${x + 34}" y="${y + 6}" dominant-baseline="middle" font-size="12">${escapeXml(series.name)}</text>`);
  });
  parts.push(`</svg>`);
  return parts.join('\n') + '\n';
}
