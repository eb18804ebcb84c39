// What both node tests share: the server and tiny model the pytest side hands over
// (environment variables), a workspace folder, the `dmem` settings VS Code would build from
// package.json, and event-based waiting with a time limit.
import { mkdtempSync, readFileSync, writeFileSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const ROOT = new URL('..', import.meta.url);
export const PACKAGE = JSON.parse(readFileSync(new URL('package.json', ROOT), 'utf8'));
/** Milliseconds for anything that waits on the server (it imports torch and loads a model). */
export const TIMEOUT_MS = 180_000;

/** The extension's own command IDs (contributes.commands). */
export const OWN_COMMANDS = PACKAGE.contributes.commands.map((c) => c.command);
export const SERVER_COMMANDS = ['dmem.explain', 'dmem.rememberDebugStep', 'dmem.acceptCompletion', 'dmem.resetMemory', 'dmem.memoryStatus'];

/** {command: [program, ...args], model, adapter} from DMEM_TEST_*, or a reason to skip. */
export function serverUnderTest() {
  const { DMEM_TEST_SERVER, DMEM_TEST_MODEL, DMEM_TEST_ADAPTER } = process.env;
  if (!DMEM_TEST_SERVER || !DMEM_TEST_MODEL || !DMEM_TEST_ADAPTER) {
    return { skip: 'needs DMEM_TEST_SERVER, DMEM_TEST_MODEL and DMEM_TEST_ADAPTER: run it through pytest tests/editors/test_vscode.py' };
  }
  return { command: JSON.parse(DMEM_TEST_SERVER), model: DMEM_TEST_MODEL, adapter: DMEM_TEST_ADAPTER };
}

/** A temp workspace folder with a convention file and a Python file. */
export function makeWorkspace() {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'dmem-vscode-')));
  writeFileSync(join(dir, 'README.md'), '# Project\nUse snake_case. Tests live in tests/.\n');
  const text = 'import os\n\ndef add(a, b):\n    return a + b\n\nresult = add(1, 2)\n';
  writeFileSync(join(dir, 'app.py'), text);
  return { dir, uri: pathToFileURL(dir).href, file: join(dir, 'app.py'), fileUri: pathToFileURL(join(dir, 'app.py')).href, text };
}

/** Settings for the tests: the tiny model, CPU, short generations, no debouncing. */
export function testSettings(server) {
  return {
    'dmem.model': server.model,
    'dmem.adapter': server.adapter,
    'dmem.device': 'cpu',
    'dmem.completion.maxTokens': 8,
    'dmem.completion.debounceMs': 0,
    'dmem.explain.maxTokens': 16,
    'dmem.memory.editDebounceMs': 0,
    'dmem.memory.saveDebounceMs': 0,
    'dmem.client.serverPath': server.command[0],
    'dmem.client.serverArgs': server.command.slice(1),
  };
}

/**
 * All settings as VS Code holds them: package.json's defaults with `values` laid over,
 * dotted keys made into nested objects (what `getConfiguration().get('dmem')` returns).
 */
export function configuration(values = {}) {
  const flat = {};
  for (const [key, schema] of Object.entries(PACKAGE.contributes.configuration.properties)) {
    flat[key] = schema.default;
  }
  Object.assign(flat, values);
  const tree = {};
  for (const [key, value] of Object.entries(flat)) {
    const parts = key.split('.');
    let node = tree;
    for (const part of parts.slice(0, -1)) {
      node = node[part] ??= {};
    }
    node[parts.at(-1)] = structuredClone(value);
  }
  return tree;
}

/** Look `dotted.key` up in a nested object. */
export function lookup(tree, key) {
  return key ? key.split('.').reduce((node, part) => (node === undefined || node === null ? undefined : node[part]), tree) : tree;
}

/**
 * Resolve when `predicate()` holds, checking it now and whenever `onChange` fires;
 * reject after `ms`, with `describe()` in the message.
 */
export function until(onChange, predicate, what, describe = () => '', ms = TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    let subscription;
    const timer = setTimeout(() => {
      subscription?.dispose();
      reject(new Error(`timed out after ${ms} ms waiting for ${what}\n${describe()}`));
    }, ms);
    const check = () => {
      let value;
      try {
        value = predicate();
      } catch (error) {
        clearTimeout(timer);
        subscription?.dispose();
        reject(error);
        return;
      }
      if (value) {
        clearTimeout(timer);
        subscription?.dispose();
        resolve(value);
      }
    };
    subscription = onChange(check);
    check();
  });
}

/** `promise`, or a rejection naming `what` after `ms`. */
export function within(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
