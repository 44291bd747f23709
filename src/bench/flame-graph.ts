/**
 * Draws a V8 `.cpuprofile` as a flame graph in SVG: one box per call path,
 * as wide as the CPU time spent in it and below it, callers under callees
 * (the root at the bottom). Idle time is left out, so the full width is the
 * busy time. Boxes are coloured by package / project folder (`bucketOf`), and
 * each carries a tooltip with its function, place and time; nothing is
 * interactive, so the file opens anywhere (a browser, an image viewer).
 */
import { bucketOf, selfMicrosByNode, shortenUrl, type CpuProfile, type CpuProfileNode } from './cpu-profile.js';
import { escapeXml } from './svg-chart.js';

export interface FlameGraphOptions {
  title: string;
  /** Drawing width in px (default 1200). */
  width?: number;
  /** Paths narrower than this share of the busy time are not drawn (default 0.001 = 0.1 %). */
  minShare?: number;
  /** Deepest stack level drawn (default 50; module loading at start-up goes deeper, requests do not). */
  maxDepth?: number;
}

interface Frame {
  name: string;
  url: string;
  lineNumber: number;
  bucket: string;
  totalMicros: number;
  children: Frame[];
}

const ROW_HEIGHT = 16;
const HEADER_HEIGHT = 40;
const CHAR_WIDTH = 6.6;
const IDLE = '(idle)';

/** The call tree with inclusive times, siblings of the same function merged, idle dropped. */
export function callTree(profile: CpuProfile): Frame {
  const selfMicros = selfMicrosByNode(profile);
  const byId = new Map<number, CpuProfileNode>(profile.nodes.map((node) => [node.id, node]));
  const childIds = new Set<number>(profile.nodes.flatMap((node) => node.children ?? []));
  const build = (node: CpuProfileNode): Frame => {
    const name = node.callFrame.functionName === '' ? '(anonymous)' : node.callFrame.functionName;
    const frame: Frame = { name, url: node.callFrame.url, lineNumber: node.callFrame.lineNumber + 1, bucket: bucketOf(name, node.callFrame.url), totalMicros: selfMicros.get(node.id) ?? 0, children: [] };
    const merged = new Map<string, Frame>();
    for (const childId of node.children ?? []) {
      const child = byId.get(childId);
      if (child === undefined || child.callFrame.functionName === IDLE) continue;
      const built = build(child);
      const key = `${built.name}\u0000${built.url}\u0000${built.lineNumber}`;
      const existing = merged.get(key);
      if (existing === undefined) merged.set(key, built);
      else mergeInto(existing, built);
    }
    frame.children = [...merged.values()].filter((child) => child.totalMicros > 0).sort((left, right) => right.totalMicros - left.totalMicros);
    for (const child of frame.children) frame.totalMicros += child.totalMicros;
    return frame;
  };
  // Merged profiles (several workers) have several roots: they become one.
  const roots = profile.nodes.filter((node) => !childIds.has(node.id)).map(build);
  if (roots.length === 1) return roots[0]!;
  const root: Frame = { name: '(root)', url: '', lineNumber: 0, bucket: '(root)', totalMicros: 0, children: [] };
  for (const tree of roots) {
    if (root.children.length === 0) root.children = tree.children;
    else for (const child of tree.children) root.children.push(child);
    root.totalMicros += tree.totalMicros;
  }
  return root;
}

function mergeInto(target: Frame, source: Frame): void {
  target.totalMicros += source.totalMicros;
  for (const child of source.children) {
    const twin = target.children.find((candidate) => candidate.name === child.name && candidate.url === child.url && candidate.lineNumber === child.lineNumber);
    if (twin === undefined) target.children.push(child);
    else mergeInto(twin, child);
  }
}

/** A stable colour per bucket: warm for Node and packages, blue-green for the project's own folders. */
function colourOf(bucket: string): string {
  let hash = 0;
  for (let index = 0; index < bucket.length; index++) hash = (hash * 31 + bucket.charCodeAt(index)) >>> 0;
  if (bucket.startsWith('llm-proxy/')) return `hsl(${170 + (hash % 50)}, 55%, ${62 + (hash % 12)}%)`;
  if (bucket === '(garbage collector)') return 'hsl(0, 0%, 70%)';
  return `hsl(${(hash % 55) + 5}, 75%, ${60 + (hash % 14)}%)`;
}

function format(micros: number): string {
  return micros >= 1000 ? `${(micros / 1000).toFixed(1)} ms` : `${Math.round(micros)} µs`;
}

interface PlacedBox {
  frame: Frame;
  depth: number;
  x: number;
  width: number;
}

export function renderFlameGraph(profile: CpuProfile, options: FlameGraphOptions): string {
  const width = options.width ?? 1200;
  const minShare = options.minShare ?? 0.001;
  const maxDepth = options.maxDepth ?? 50;
  const root = callTree(profile);
  const busy = root.totalMicros;
  const placed: PlacedBox[] = [];
  const place = (frame: Frame, depth: number, x: number): void => {
    if (depth > maxDepth || busy === 0 || frame.totalMicros / busy < minShare) return;
    placed.push({ frame, depth, x, width: (frame.totalMicros / busy) * width });
    let childX = x;
    for (const child of frame.children) {
      place(child, depth + 1, childX);
      childX += (child.totalMicros / busy) * width;
    }
  };
  place(root, 0, 0);
  const deepest = placed.reduce((max, box) => Math.max(max, box.depth), 0);
  const height = HEADER_HEIGHT + (deepest + 1) * ROW_HEIGHT + 8;
  const boxes = placed.map(({ frame, depth, x, width: boxWidth }) => {
    const y = height - 8 - (depth + 1) * ROW_HEIGHT;
    const share = ((frame.totalMicros / busy) * 100).toFixed(2);
    const where = frame.url === '' ? '' : ` ${shortenUrl(frame.url)}:${frame.lineNumber}`;
    const tooltip = escapeXml(`${frame.name}${where} (${frame.bucket}): ${format(frame.totalMicros)}, ${share} %`);
    const fits = Math.floor((boxWidth - 6) / CHAR_WIDTH);
    const label = fits >= 3 ? escapeXml(frame.name.length <= fits ? frame.name : `${frame.name.slice(0, fits - 1)}…`) : '';
    const text = label === '' ? '' : `<text x="${round(x + 3)}" y="${y + ROW_HEIGHT - 5}">${label}</text>`;
    return `<g><title>${tooltip}</title><rect x="${round(x)}" y="${y}" width="${round(Math.max(0.5, boxWidth - 0.5))}" height="${ROW_HEIGHT - 1}" fill="${colourOf(frame.bucket)}"/>${text}</g>`;
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="monospace" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="4" y="16" font-size="14">${escapeXml(options.title)}</text>`,
    `<text x="4" y="32" fill="#555">${escapeXml(`busy ${format(busy)}; width = CPU time in a function and below it; callers under callees; hover a box for its time`)}</text>`,
    ...boxes,
    '</svg>',
    '',
  ].join('\n');
}

function round(value: number): string {
  return String(Math.round(value * 100) / 100);
}
