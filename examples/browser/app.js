// The ASAP browser example: one WebSocketTransport from the browser bundle, its connection state
// shown live, TaskRequests sent from a form, streamed chunks and pushed updates listed as they arrive.
// `asap serve --static examples/browser` serves this page and the bundle at /asap-client.js.
import { createEnvelope, WebSocketTransport } from '/asap-client.js';

const SENDER = 'urn:asap:agent:browser-example';
const RECIPIENT = 'urn:asap:agent:demo';
const EXAMPLE_INPUTS = {
  echo: { hello: 'world' },
  stream: { chunks: 5, interval_ms: 200 },
  push: { count: 3 },
  sleep: { ms: 1000 },
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const wsScheme = location.protocol === 'https:' ? 'wss' : 'ws';

$('url').value = params.get('url') ?? `${wsScheme}://${location.host}/asap/ws`;
$('token').value = params.get('token') ?? '';
$('input').value = JSON.stringify(EXAMPLE_INPUTS.echo);

/** The current transport and the removers of the listeners the page put on it. */
let transport;
let detach = [];
const history = [];

function showState(state) {
  const badge = $('state');
  badge.textContent = state;
  badge.dataset.state = state;
  history.push(state);
  $('history').textContent = history.slice(-12).join(' → ');
}

function logEntry(kind, text) {
  const li = document.createElement('li');
  li.dataset.testid = 'log-entry';
  li.dataset.kind = kind;
  const label = document.createElement('span');
  label.className = 'kind';
  label.textContent = kind;
  li.append(label, ` ${text}`);
  $('log').append(li);
  li.scrollIntoView({ block: 'nearest' });
}

function showError(err) {
  const el = $('error');
  const code = typeof err?.code === 'number' ? ` (${err.code})` : '';
  el.textContent = `${err?.name ?? 'Error'}${code}: ${err?.message ?? String(err)}`;
  el.dataset.code = typeof err?.code === 'number' ? String(err.code) : '';
  el.hidden = false;
}

function clearOutput() {
  $('log').replaceChildren();
  $('response').textContent = '';
  $('response').dataset.status = '';
  $('error').hidden = true;
  $('error').textContent = '';
}

function percent(n) {
  return `${Math.round(n * 100)}%`;
}

async function connect() {
  if (transport !== undefined) {
    for (const off of detach) off();
    void transport.close();
  }
  $('error').hidden = true;
  const token = $('token').value.trim();
  const t = new WebSocketTransport($('url').value.trim(), {
    token: token === '' ? undefined : token,
    backoff: { baseMs: 250, maxMs: 2000 },
  });
  transport = t;
  detach = [
    t.on('state', showState),
    t.on('message', (env) => {
      const p = env.payload;
      const pct = p.progress?.percent;
      const text = p.progress?.message ?? p.update_type ?? env.payload_type;
      logEntry('push', `${env.payload_type}: ${text}${pct === undefined ? '' : ` · ${pct}%`}`);
    }),
    t.on('gaveUp', ({ error }) => showError(error)),
  ];
  try {
    await t.connect();
  } catch (err) {
    if (t === transport) showError(err);
  }
}

async function send(ev) {
  ev.preventDefault();
  clearOutput();
  const skill = $('skill').value;
  let input;
  try {
    input = JSON.parse($('input').value.trim() || '{}');
  } catch {
    showError(new Error('The input is not valid JSON'));
    return;
  }
  if (transport === undefined || transport.state === 'closed') await connect();
  const envelope = createEnvelope({
    sender: SENDER,
    recipient: RECIPIENT,
    payload_type: 'TaskRequest',
    payload: { conversation_id: `conv-${Date.now().toString(36)}`, skill_id: skill, input },
  });
  $('send').disabled = true;
  try {
    let response;
    if (skill === 'stream') {
      for await (const chunk of transport.stream(envelope)) {
        const p = chunk.payload;
        logEntry('chunk', `${p.chunk} · ${percent(p.progress ?? 0)}${p.final ? ' · final' : ''}`);
        response = chunk;
      }
    } else {
      response = await transport.request(envelope);
    }
    $('response').textContent = JSON.stringify(
      {
        payload_type: response.payload_type,
        correlation_id: response.correlation_id,
        payload: response.payload,
      },
      null,
      2,
    );
    $('response').dataset.status = response.payload.status ?? '';
  } catch (err) {
    showError(err);
  } finally {
    $('send').disabled = false;
  }
}

$('skill').addEventListener('change', () => {
  $('input').value = JSON.stringify(EXAMPLE_INPUTS[$('skill').value] ?? {});
});
$('connection').addEventListener('submit', (ev) => {
  ev.preventDefault();
  void connect();
});
$('disconnect').addEventListener('click', () => void transport?.close());
$('task').addEventListener('submit', (ev) => void send(ev));

// For the console and for tests: the live transport.
window.asapExample = {
  get transport() {
    return transport;
  },
};
document.body.dataset.ready = 'true';
if (params.get('autoconnect') !== '0') void connect();
