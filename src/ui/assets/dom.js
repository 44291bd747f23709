// DOM helpers for the operations page. Every piece of data goes into the page as text
// (textContent, attributes set one by one), never as HTML: agent ids and models are client-chosen.

/** An element with attributes (strings; `dataset` and `className` too) and children (nodes or text). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  append(node, children);
  return node;
}

export function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name === 'className') node.className = value;
    else node.setAttribute(name, String(value));
  }
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of the element with id `id`. */
export function fill(id, ...children) {
  const node = document.getElementById(id);
  if (node === null) return;
  node.replaceChildren();
  append(node, children);
}

/** A table: columns are {label, className, value(row), text(row)?, node(row)?}; rows keyed by `key(row)`. */
export function table(columns, rows, key, empty = 'nothing yet') {
  const head = el('tr', {}, ...columns.map((column) => el('th', { className: column.className ?? '' }, column.label)));
  const body = rows.map((row) =>
    el(
      'tr',
      { dataset: { key: key(row) } },
      ...columns.map((column) => {
        const value = column.value(row);
        const cell = el('td', { className: column.className ?? '' });
        if (typeof value === 'number') cell.dataset.value = String(value);
        const content = column.node ? column.node(row) : column.text ? column.text(row) : value;
        append(cell, [content ?? '']);
        return cell;
      }),
    ),
  );
  if (rows.length === 0) body.push(el('tr', {}, el('td', { colspan: columns.length, className: 'empty' }, empty)));
  return el('table', {}, el('thead', {}, head), el('tbody', {}, ...body));
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

export function formatInteger(value) {
  return Number.isFinite(value) ? integer.format(value) : '-';
}

/** Dollars: six decimals below a cent (LLM calls cost fractions of one), four below $100, else two. */
export function formatUsd(value) {
  if (!Number.isFinite(value)) return '-';
  const digits = value < 0.01 ? 6 : value < 100 ? 4 : 2;
  return `$${value.toFixed(digits)}`;
}

export function formatRate(value) {
  if (!Number.isFinite(value)) return '-';
  return value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

export function formatPercent(value) {
  return Number.isFinite(value) ? `${(value * 100).toFixed(1)}%` : '-';
}

export function formatMs(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return '-';
  return value >= 10_000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '-';
  if (seconds < 60) return `${Math.round(seconds)}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${Math.round(seconds % 60)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

export function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '-' : date.toISOString().slice(11, 19);
}

/** A short form of a long id (workers' ids are 22 characters), the whole one in the tooltip. */
export function shortId(id) {
  const text = String(id ?? '');
  return el('span', { title: text, className: 'id' }, text.length > 12 ? `${text.slice(0, 12)}…` : text);
}
