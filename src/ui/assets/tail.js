// The live tail of usage events: kept here (the latest KEEP), drawn latest first, filtered by the
// server (the page reconnects with ?agent=…&model=…&status=… when the filter changes).
import { el, fill, formatInteger, formatMs, formatTime, formatUsd, shortId, table } from './dom.js';

const KEEP = 500;
const SHOWN = 100;

export class Tail {
  constructor() {
    this.events = [];
    this.skipped = 0;
  }

  /** An `events` message: {events, skipped, reset?}. */
  add(message) {
    if (message.reset) {
      this.events = [];
      this.skipped = 0;
    }
    this.events.push(...message.events);
    if (this.events.length > KEEP) this.events.splice(0, this.events.length - KEEP);
    this.skipped += message.skipped ?? 0;
    this.render();
  }

  render() {
    const latest = this.events.slice(-SHOWN).reverse();
    fill(
      'tail-note',
      this.skipped > 0 ? `${formatInteger(this.skipped)} events arrived faster than shown and were left out` : '',
    );
    fill(
      'tail',
      table(
        [
          { label: 'time', value: (row) => row.ts, text: (row) => formatTime(row.ts) },
          { label: 'agent', className: 'agent', value: (row) => row.agent_id ?? '' },
          { label: 'microDAO', className: 'microdao', value: (row) => row.microdao_id ?? '' },
          { label: 'model', className: 'model', value: (row) => row.model ?? '' },
          { label: 'provider', value: (row) => row.provider ?? '' },
          {
            label: 'status',
            className: 'status',
            value: (row) => row.status,
            node: (row) => el('span', { className: `badge ${row.status === 'ok' ? 'good' : 'bad'}` }, row.status),
          },
          { label: 'error', className: 'error-code', value: (row) => row.error_code ?? '' },
          { label: 'prompt', className: 'num prompt', value: (row) => row.prompt_tokens },
          { label: 'completion', className: 'num completion', value: (row) => row.completion_tokens },
          {
            label: 'cost',
            className: 'num cost',
            value: (row) => row.cost_usd,
            text: (row) => formatUsd(row.cost_usd),
          },
          {
            label: 'latency',
            className: 'num latency',
            value: (row) => row.latency_ms,
            text: (row) => formatMs(row.latency_ms),
          },
          {
            label: 'flags',
            value: (row) => [row.stream ? 'stream' : '', row.cached ? 'cached' : ''].filter(Boolean).join(' '),
          },
          { label: 'worker', value: () => '', node: (row) => shortId(row.worker_id) },
        ],
        latest,
        (row) => row.request_id,
        'no event yet (matching the filter)',
      ),
    );
  }
}

/** The filter form's values, empty ones left out. */
export function filterValues(form) {
  const values = {};
  for (const name of ['agent', 'model', 'status']) {
    const value = form.elements.namedItem(name)?.value?.trim() ?? '';
    if (value !== '') values[name] = value;
  }
  return values;
}
