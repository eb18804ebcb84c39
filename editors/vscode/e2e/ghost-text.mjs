// Real VS Code (code-server) in headless Chromium with the packaged extension and the real
// dmem-lsp: typing shows ghost text, Tab inserts it, the server learns it (an "accepted
// completion" written into memory), and no suggest popup ever offers it. Then, with
// `lastEdit`, one more edit, not saved, and the user goes: the window closes and code-server
// is stopped (SIGTERM) as soon as the server has the edit (the test then checks the disk).
//
// Run with Node 24 (code-server's): node ghost-text.mjs, configured by one environment
// variable, DMEM_E2E (JSON; tests/editors/test_code_server.py writes it):
//   { dir, vsix, chromium, server: [command, ...args], source, typed, expected, timeoutMs, lastEdit? }
// `dir` is a fresh directory for everything (HOME, user data, extensions, workspace, logs);
// nothing is reached outside 127.0.0.1. Every wait has a timeout; the whole run has another.
// Progress goes to stderr; on failure the reason and the logs' tails, exit code 1.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import puppeteer from 'puppeteer-core';

const config = JSON.parse(process.env.DMEM_E2E);
const codeServer = createRequire(import.meta.url).resolve('code-server/out/node/entry.js');
const STEP_MS = config.timeoutMs ?? 180_000;
const dir = (...parts) => join(config.dir, ...parts);
const say = (message) => process.stderr.write(`[e2e ${(performance.now() / 1000).toFixed(1)}s] ${message}\n`);

const paths = {
  home: dir('home'),
  userData: dir('user-data'),
  extensions: dir('extensions'),
  workspace: dir('project'),
  serverLog: dir('dmem-lsp.log'),
  codeServerLog: dir('code-server.log'),
  chromium: dir('chromium-profile'),
  console: dir('browser-console.log'),
};
const file = join(paths.workspace, 'main.py');
const env = {
  ...process.env,
  EXTENSIONS_GALLERY: '{}', // no marketplace: nothing is fetched from open-vsx.org
  HOME: paths.home,
  XDG_CONFIG_HOME: join(paths.home, '.config'),
  XDG_DATA_HOME: join(paths.home, '.local', 'share'), // dmem-lsp's workspace memory goes here
  XDG_CACHE_HOME: join(paths.home, '.cache'),
};
const [serverPath, ...serverArgs] = config.server;
const settings = {
  'dmem.client.serverPath': serverPath,
  'dmem.client.serverArgs': [...serverArgs, '--log-file', paths.serverLog, '-vv'],
  'dmem.completion.maxTokens': 8,
  'dmem.completion.debounceMs': 0,
  'dmem.memory.editDebounceMs': 600000, // edits are written on save, not as typed
  'editor.inlineSuggest.enabled': true,
  'editor.wordBasedSuggestions': 'off', // the only popup there could be is the server's
  'workbench.startupEditor': 'none',
  'workbench.tips.enabled': false,
  'workbench.enableExperiments': false,
  'telemetry.telemetryLevel': 'off',
  'update.mode': 'none',
  'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false,
  'security.workspace.trust.enabled': false,
  'chat.disableAIFeatures': true,
  'git.enabled': false,
  'files.autoSave': 'off',
  'files.insertFinalNewline': false,
  'files.trimTrailingWhitespace': false,
};

/** `promise`, or an error naming `what` after `ms`. */
function within(promise, what, ms = STEP_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `check` (which returns a truthy value when done) every 100 ms; events in a browser are not ours to await. */
async function until(check, what, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Files named `name` under `root` (VS Code keeps each output channel's log in logs/<date>/exthost<n>/<extension>/). */
function findLogs(root, name) {
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true }).filter((path) => basename(path) === name).map((path) => join(root, path));
}

const read = (path) => (existsSync(path) ? readFileSync(path, 'utf8') : '');
const tail = (text, lines = 40) => text.split('\n').slice(-lines).join('\n');

function prepare() {
  for (const path of [paths.home, paths.extensions, join(paths.workspace, '.git')]) {
    mkdirSync(path, { recursive: true });
  }
  writeFileSync(file, config.source);
  // User: the browser side's settings; Machine: the remote's, where machine-scoped ones
  // (dmem.client.serverPath, serverArgs) are read in code-server
  for (const scope of ['User', 'Machine']) {
    mkdirSync(join(paths.userData, scope), { recursive: true });
    writeFileSync(join(paths.userData, scope, 'settings.json'), JSON.stringify(settings, null, 2));
  }
  writeFileSync(dir('code-server.yaml'), 'auth: none\n');
}

async function installExtension() {
  const args = [codeServer, '--user-data-dir', paths.userData, '--extensions-dir', paths.extensions, '--install-extension', config.vsix];
  const { stdout } = await promisify(execFile)(process.execPath, args, { env, timeout: STEP_MS });
  assert.match(stdout, /successfully installed/, stdout);
}

/** code-server on 127.0.0.1 (a port the system picks), without auth, telemetry or update checks. */
async function startCodeServer() {
  const args = [
    codeServer,
    '--config', dir('code-server.yaml'),
    '--auth', 'none',
    '--bind-addr', '127.0.0.1:0',
    '--disable-telemetry',
    '--disable-update-check',
    '--disable-workspace-trust',
    '--disable-getting-started-override',
    '--user-data-dir', paths.userData,
    '--extensions-dir', paths.extensions,
    '--ignore-last-opened',
    paths.workspace,
  ];
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const listening = new Promise((resolve, reject) => {
    const onData = (data) => {
      log += data;
      writeFileSync(paths.codeServerLog, log);
      const match = /HTTP server listening on (http:\/\/127\.0\.0\.1:\d+)\//.exec(log);
      if (match) resolve(match[1]);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code, signal) => reject(new Error(`code-server exited (${code ?? signal}):\n${tail(log)}`)));
  });
  return { child, url: await within(listening, 'code-server to listen') };
}

function launchChromium() {
  return puppeteer.launch({
    executablePath: config.chromium,
    headless: 'shell',
    userDataDir: paths.chromium,
    protocolTimeout: STEP_MS,
    env,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
      '--window-size=1400,900',
    ],
  });
}

/** Record the rows of every suggest popup that shows, as they appear (runs in the page). */
function watchSuggestWidget() {
  window.__dmemSuggestions = [];
  const record = () => {
    for (const row of document.querySelectorAll('.suggest-widget.visible .monaco-list-row')) {
      window.__dmemSuggestions.push(row.textContent.replace(/\u00a0/g, ' '));
    }
  };
  new MutationObserver(record).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
}

/** The explicitly invoked suggest popup once it has its answer: its rows, or null while loading (runs in the page). */
function settledSuggestWidget() {
  const widget = document.querySelector('.suggest-widget.visible');
  if (!widget) return null;
  const rows = [...widget.querySelectorAll('.monaco-list-row')].map((row) => row.textContent.replace(/\u00a0/g, ' '));
  const message = widget.querySelector('.message')?.textContent ?? '';
  return rows.length || (message && !/loading/i.test(message)) ? { rows, message } : null;
}

const ghostText = () =>
  [...document.querySelectorAll('.ghost-text-decoration, .ghost-text')].map((e) => e.textContent).join('').replace(/\u00a0/g, ' ');
const statusText = () => [...document.querySelectorAll('.statusbar-item')].map((e) => e.textContent).find((t) => /\bdmem\b/.test(t)) ?? '';
const requests = (method) => (read(paths.serverLog).match(new RegExp(`Request '${method}' received`, 'g')) ?? []).length;
const notifications = (method) => read(paths.serverLog).split(`Notification '${method}' received`).length - 1;
const changes = () => notifications('textDocument/didChange');

async function chord(page, modifier, key) {
  await page.keyboard.down(modifier);
  await page.keyboard.press(key);
  await page.keyboard.up(modifier);
}

async function openInEditor(page, name) {
  await chord(page, 'Control', 'KeyP'); // quick open
  await page.waitForSelector('.quick-input-widget input');
  await page.keyboard.type(name);
  await until(() => page.evaluate(() => document.querySelector('.quick-input-list .monaco-list-row') !== null), `quick open to list ${name}`);
  await page.keyboard.press('Enter');
  await until(
    () => page.evaluate(() => [...document.querySelectorAll('.view-line')].some((line) => line.textContent.replace(/\u00a0/g, ' ').includes('def add'))),
    `${name} in the editor`,
  );
  // The editor creates its inline-completion controller when the window is first idle (at most
  // 5 s later); keys typed before then ask for nothing. Idle callbacks run in the order they were
  // requested, so once this one has run, the editor's has too.
  await page.evaluate(() => new Promise((resolve) => requestIdleCallback(() => resolve())));
}

async function drive(page, url) {
  await page.goto(`${url}/?folder=${encodeURIComponent(paths.workspace)}`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('.monaco-workbench .part.statusbar');
  say('the workbench is up; waiting for dmem to be ready');
  const status = await until(async () => {
    const text = await page.evaluate(statusText);
    if (/error/.test(text)) throw new Error(`the dmem status bar says ${text}`);
    return /dmem [\d,]+ tokens/.test(text) && text;
  }, 'the dmem status bar item to show the memory in tokens (the model loaded, the folder opened)');
  say(`status bar: ${status}; opening main.py`);
  await openInEditor(page, 'main.py');
  await page.evaluate(watchSuggestWidget);

  // typing: ghost text, the server's completion
  await chord(page, 'Control', 'End');
  say(`typing ${JSON.stringify(config.typed)}`);
  await page.keyboard.type(config.typed);
  const shown = await until(async () => (await page.evaluate(ghostText)) || false, 'ghost text after typing');
  say(`ghost text: ${JSON.stringify(shown)}`);
  assert.equal(shown.trimEnd(), config.expected.split('\n')[0].trimEnd(), "the ghost text is the server's completion");

  // Tab accepts it, and the item's command (dmem.acceptCompletion) makes the server learn it
  const before = read(paths.serverLog).length;
  await page.keyboard.press('Tab');
  await until(async () => !(await page.evaluate(ghostText)), 'the ghost text to be accepted');
  const learned = await until(
    () => read(paths.serverLog).slice(before).split('\n')
      .find((line) => line.includes('dmem/memory') && line.includes('"written"') && line.includes('"accepted completion"')),
    'the server to write the accepted completion into memory',
  );
  say(`learned: ${learned.slice(learned.indexOf('{'), learned.indexOf('{') + 240)}`);

  // the suggest popup, asked for explicitly, has nothing from dmem: no second generation
  await chord(page, 'Control', 'Space');
  const popup = await until(() => page.evaluate(settledSuggestWidget), 'the suggest popup to settle');
  say(`suggest popup: ${JSON.stringify(popup)}`);
  await page.keyboard.press('Escape');

  await chord(page, 'Control', 'KeyS');
  const saved = config.source + config.typed + config.expected;
  await until(() => read(file) === saved, `main.py saved as ${JSON.stringify(saved)} (it holds ${JSON.stringify(read(file))})`);
  await until(() => notifications('textDocument/didSave') > 0, 'the server to receive didSave');

  const first = config.expected.trim().split('\n')[0];
  const offered = [...(await page.evaluate(() => window.__dmemSuggestions)), ...popup.rows].filter((row) => row.includes(first));
  assert.deepEqual(offered, [], 'a suggest popup offered the completion');
  assert.ok(requests('textDocument/inlineCompletion') > 0, 'VS Code asked for inline completions');
  assert.equal(requests('textDocument/completion'), 0, 'VS Code asked for a completion popup too');
}

/** One more edit, unsaved; once the server has it, close the window and stop code-server. */
async function editAndQuit(page, browser, server) {
  const before = changes();
  await chord(page, 'Control', 'End');
  await page.keyboard.sendCharacter(config.lastEdit); // one input event: one change
  await until(() => changes() > before, 'the server to receive the last edit');
  say('the server has the last edit; closing the window, then stopping code-server');
  await browser.close();
  const exited = new Promise((resolve) => server.child.once('exit', (code, signal) => resolve(code ?? signal)));
  server.child.kill('SIGTERM');
  say(`code-server exited (${await within(exited, 'code-server to exit after SIGTERM')})`);
}

async function main() {
  prepare();
  say('installing the extension');
  await installExtension();
  say('starting code-server');
  const server = await startCodeServer();
  let browser;
  let page;
  try {
    say(`code-server at ${server.url}; starting Chromium`);
    browser = await within(launchChromium(), 'Chromium to start');
    [page] = await browser.pages();
    page.setDefaultTimeout(STEP_MS);
    page.on('console', (message) => appendFileSync(paths.console, `${message.type()}: ${message.text()}\n`));
    // a headless window may never get the system's focus: the editor must believe it has it
    await (await page.createCDPSession()).send('Emulation.setFocusEmulationEnabled', { enabled: true });
    await drive(page, server.url);
    say('ghost text shown, accepted with Tab, learned; no popup');
    if (config.lastEdit) {
      await editAndQuit(page, browser, server);
      say('edited and quit');
    }
  } catch (error) {
    await page?.screenshot({ path: dir('failure.png') }).catch(() => undefined);
    throw error;
  } finally {
    await browser?.close().catch(() => undefined);
    server.child.kill('SIGTERM');
  }
}

const watchdog = setTimeout(() => {
  say(`the whole run took longer than ${4 * STEP_MS} ms`);
  process.exit(1);
}, 4 * STEP_MS);
try {
  await main();
  clearTimeout(watchdog);
} catch (error) {
  say(`code-server log tail:\n${tail(read(paths.codeServerLog), 15)}`);
  for (const log of findLogs(join(paths.userData, 'logs'), 'dmem.log')) {
    say(`the extension's output (${log}):\n${tail(read(log), 15)}`);
  }
  say(`dmem-lsp log tail (${paths.serverLog}):\n${tail(read(paths.serverLog), 30)}`);
  say(`FAILED: ${error.stack ?? error}`);
  process.exit(1);
}
