// The operations page: one EventSource on /ui/events (snapshots every couple of seconds, usage
// events every half second), every panel redrawn from the latest snapshot.
import { fill } from './dom.js';
import { renderDeployments, renderLimits, renderProblems, renderServices, renderTraffic } from './panels.js';
import { renderSpend } from './spend.js';
import { filterValues, Tail } from './tail.js';

const tail = new Tail();
let source;

function setStatus(text, level) {
  const status = document.getElementById('status');
  if (status === null) return;
  status.textContent = text;
  status.className = `status ${level}`;
}

function render(snapshot) {
  for (const panel of [renderProblems, renderServices, renderTraffic, renderSpend, renderDeployments, renderLimits]) {
    try {
      panel(snapshot);
    } catch (error) {
      console.error('panel failed', panel.name, error);
    }
  }
  fill('updated', `updated ${new Date(snapshot.at).toISOString().slice(11, 19)} UTC`);
  document.body.dataset.ready = 'true';
}

function connect(filter) {
  source?.close();
  const query = new URLSearchParams(filter).toString();
  source = new EventSource(`/ui/events${query === '' ? '' : `?${query}`}`);
  source.addEventListener('open', () => setStatus('live', 'good'));
  source.addEventListener('snapshot', (message) => render(JSON.parse(message.data)));
  source.addEventListener('events', (message) => tail.add(JSON.parse(message.data)));
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (the session ended) or the server is gone: the page load shows the login if needed.
      setStatus('disconnected', 'bad');
      setTimeout(() => window.location.reload(), 5_000);
    } else {
      setStatus('reconnecting…', 'warn');
    }
  });
}

const form = document.getElementById('tail-filter');
let pending;
form?.addEventListener('input', () => {
  clearTimeout(pending);
  pending = setTimeout(() => connect(filterValues(form)), 400);
});
form?.addEventListener('submit', (event) => {
  event.preventDefault();
  connect(filterValues(form));
});

connect({});
