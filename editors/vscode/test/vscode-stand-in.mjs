// A stand-in for the `vscode` module, enough for the bundled extension and the real
// vscode-languageclient to run in plain Node: one workspace folder, settings as VS Code
// holds them, text documents, a command registry that refuses duplicates (as VS Code
// does), and recorders for what gets registered and shown. API the tests do not look at
// is filled in by proxies: `on…` events that never fire, `register…`/`create…` that record;
// the API's other classes and enums come from @types/vscode.
import { readFileSync } from 'node:fs';
import Module, { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { lookup } from './helpers.mjs';

export class Disposable {
  static from(...items) {
    return new Disposable(() => items.forEach((item) => item?.dispose?.()));
  }
  constructor(callOnDispose) {
    this.callOnDispose = callOnDispose;
  }
  dispose() {
    this.callOnDispose?.();
    this.callOnDispose = undefined;
  }
}

export class EventEmitter {
  listeners = new Set();
  event = (listener, thisArg, disposables) => {
    const bound = listener.bind(thisArg);
    this.listeners.add(bound);
    const disposable = new Disposable(() => this.listeners.delete(bound));
    disposables?.push(disposable);
    return disposable;
  };
  fire(value) {
    [...this.listeners].forEach((listener) => listener(value));
  }
  dispose() {
    this.listeners.clear();
  }
}

const noEvent = () => new Disposable();

export class Uri {
  constructor(scheme, authority, path, query, fragment) {
    Object.assign(this, { scheme, authority: authority ?? '', path: path ?? '', query: query ?? '', fragment: fragment ?? '' });
  }
  static parse(value) {
    const url = new URL(value);
    return new Uri(url.protocol.slice(0, -1), url.host, decodeURIComponent(url.pathname), url.search.slice(1), url.hash.slice(1));
  }
  static file(path) {
    return new Uri('file', '', path);
  }
  static from({ scheme, authority, path, query, fragment }) {
    return new Uri(scheme, authority, path, query, fragment);
  }
  static joinPath(base, ...parts) {
    return base.with({ path: [base.path, ...parts].join('/').replace(/\/+/g, '/') });
  }
  get fsPath() {
    return this.path;
  }
  with(change) {
    return new Uri(change.scheme ?? this.scheme, change.authority ?? this.authority, change.path ?? this.path, change.query ?? this.query, change.fragment ?? this.fragment);
  }
  toString() {
    if (this.scheme === 'file') {
      return pathToFileURL(this.path).href;
    }
    const path = this.path.split('/').map(encodeURIComponent).join('/');
    return `${this.scheme}:${this.authority ? `//${this.authority}` : ''}${path}${this.query ? `?${this.query}` : ''}`;
  }
  toJSON() {
    return { $mid: 1, scheme: this.scheme, authority: this.authority, path: this.path, query: this.query, fragment: this.fragment };
  }
}

export class Position {
  constructor(line, character) {
    this.line = line;
    this.character = character;
  }
  isEqual(other) {
    return this.line === other.line && this.character === other.character;
  }
  isBefore(other) {
    return this.line < other.line || (this.line === other.line && this.character < other.character);
  }
  translate(lineDelta = 0, characterDelta = 0) {
    return new Position(this.line + lineDelta, this.character + characterDelta);
  }
}

export class Range {
  constructor(a, b, c, d) {
    [this.start, this.end] = typeof a === 'number' ? [new Position(a, b), new Position(c, d)] : [a, b];
  }
  get isEmpty() {
    return this.start.isEqual(this.end);
  }
}

export class Selection extends Range {
  constructor(anchor, active) {
    super(anchor, active);
    this.anchor = anchor;
    this.active = active;
  }
}

/** A class that keeps its arguments: for the many value types nobody looks into here. */
function valueClass(name, fields) {
  return {
    [name]: class {
      constructor(...args) {
        fields.forEach((field, i) => (this[field] = args[i]));
      }
    },
  }[name];
}

export class CodeActionKind {
  constructor(value) {
    this.value = value;
  }
  append(part) {
    return new CodeActionKind(this.value ? `${this.value}.${part}` : part);
  }
  contains(other) {
    return this.value === other.value || this.value === '' || other.value.startsWith(`${this.value}.`);
  }
  intersects(other) {
    return this.contains(other) || other.contains(this);
  }
  static Empty = new CodeActionKind('');
  static QuickFix = new CodeActionKind('quickfix');
  static Refactor = new CodeActionKind('refactor');
  static Source = new CodeActionKind('source');
}

export const InlineCompletionItem = valueClass('InlineCompletionItem', ['insertText', 'range', 'command']);
export const InlineCompletionList = valueClass('InlineCompletionList', ['items']);

class CancellationTokenSource {
  emitter = new EventEmitter();
  token = { isCancellationRequested: false, onCancellationRequested: this.emitter.event };
  cancel() {
    this.token.isCancellationRequested = true;
    this.emitter.fire();
  }
  dispose() {}
}


export function textDocument(uri, languageId, text) {
  const lines = text.split('\n');
  const offsetAt = (p) => lines.slice(0, p.line).reduce((n, line) => n + line.length + 1, 0) + p.character;
  return {
    uri,
    fileName: uri.fsPath,
    languageId,
    version: 1,
    isUntitled: false,
    isDirty: false,
    isClosed: false,
    eol: 1, // LF
    lineCount: lines.length,
    getText: (range) => (range ? text.slice(offsetAt(range.start), offsetAt(range.end)) : text),
    offsetAt,
    positionAt(offset) {
      const before = text.slice(0, offset).split('\n');
      return new Position(before.length - 1, before.at(-1).length);
    },
    lineAt: (line) => {
      const number = typeof line === 'number' ? line : line.line;
      return { lineNumber: number, text: lines[number], range: new Range(number, 0, number, lines[number].length) };
    },
    save: async () => true,
  };
}

/** The part of a namespace nobody defined: events that never fire, registrations recorded. */
function namespace(name, defined, recorder) {
  return new Proxy(defined, {
    get(target, property) {
      if (property in target || typeof property !== 'string') {
        return target[property];
      }
      if (/^on(Did|Will)/.test(property)) {
        return noEvent;
      }
      if (property.startsWith('register') || property.startsWith('create')) {
        return (...args) => {
          recorder.record(`${name}.${property}`, args);
          return createdThing(`${name}.${property}`);
        };
      }
      return undefined;
    },
  });
}

/** Whatever `create…` returns when the test does not care: every method a no-op. */
function createdThing(what) {
  return new Proxy(new Disposable(), {
    get(target, property) {
      if (property in target || typeof property !== 'string' || property === 'then') {
        return target[property];
      }
      return /^on(Did|Will)/.test(property) ? noEvent : () => undefined;
    },
    set(target, property, value) {
      target[property] = value;
      return true;
    },
  });
}

/**
 * `{vscode, ...recorders}`: `settings` is the nested configuration (see helpers.configuration),
 * `folder` the workspace folder's path, `documents` the open text documents.
 */
export function createStandIn({ settings, folder, documents = [] }) {
  const changed = new EventEmitter(); // fires after anything the recorders keep changes
  const recorder = {
    registrations: [], // [what, args]
    commands: new Map(),
    duplicates: [],
    executed: [],
    messages: [], // {kind, message, items}
    shown: [], // documents shown in editors
    statusBarItems: [],
    outputs: new Map(), // name → text
    answers: { warning: undefined, information: undefined, error: undefined, quickPick: (items) => items[0] },
    record(what, args) {
      this.registrations.push([what, args]);
      changed.fire();
    },
    registered(what) {
      return this.registrations.filter(([name]) => name === what).map(([, args]) => args);
    },
    onChange: (listener) => changed.event(listener),
    changed: () => changed.fire(),
  };

  const workspaceFolder = { uri: Uri.file(folder), name: 'workspace', index: 0 };
  const providers = new Map();
  const configurationChanged = new EventEmitter();
  const diagnosticsChanged = new EventEmitter();
  const taskEnded = new EventEmitter();
  const editorChanged = new EventEmitter();
  const diagnostics = new Map(); // uri string → Diagnostic[]

  const commands = namespace('commands', {
    registerCommand(id, callback) {
      if (recorder.commands.has(id)) {
        recorder.duplicates.push(id);
        throw new Error(`command '${id}' already exists`);
      }
      recorder.commands.set(id, callback);
      changed.fire();
      return new Disposable(() => recorder.commands.delete(id));
    },
    async executeCommand(id, ...args) {
      recorder.executed.push([id, args]);
      const callback = recorder.commands.get(id);
      if (!callback) {
        throw new Error(`command '${id}' not found`);
      }
      return callback(...args);
    },
    getCommands: async () => [...recorder.commands.keys()],
  }, recorder);

  function getConfiguration(section, _scope) {
    const prefix = section ? `${section}.` : '';
    const base = lookup(settings, section) ?? {};
    return {
      ...structuredClone(base),
      get: (key, fallback) => structuredClone(lookup(settings, prefix + key) ?? fallback),
      has: (key) => lookup(settings, prefix + key) !== undefined,
      inspect: (key) => ({ key: prefix + key, defaultValue: lookup(settings, prefix + key) }),
      async update(key, value) {
        const parts = (prefix + key).split('.');
        const parent = lookup(settings, parts.slice(0, -1).join('.'));
        parent[parts.at(-1)] = value;
        const changedKey = prefix + key;
        configurationChanged.fire({ affectsConfiguration: (s) => changedKey === s || changedKey.startsWith(`${s}.`) || s.startsWith(`${changedKey}.`) });
      },
    };
  }

  const workspace = namespace('workspace', {
    workspaceFolders: [workspaceFolder],
    name: 'workspace',
    rootPath: folder,
    textDocuments: documents,
    notebookDocuments: [],
    getConfiguration,
    getWorkspaceFolder: (uri) => (uri.scheme === 'file' && (uri.path === folder || uri.path.startsWith(`${folder}/`)) ? workspaceFolder : undefined),
    onDidChangeConfiguration: configurationChanged.event,
    registerTextDocumentContentProvider(scheme, provider) {
      providers.set(scheme, provider);
      return new Disposable(() => providers.delete(scheme));
    },
    async openTextDocument(uri) {
      const text = await providers.get(uri.scheme).provideTextDocumentContent(uri);
      return textDocument(uri, uri.path.endsWith('.md') ? 'markdown' : 'plaintext', text);
    },
    applyEdit: async () => true,
  }, recorder);

  const window = namespace('window', {
    activeTextEditor: undefined,
    visibleTextEditors: [],
    tabGroups: { all: [], onDidChangeTabs: noEvent, onDidChangeTabGroups: noEvent },
    onDidChangeActiveTextEditor: editorChanged.event,
    createOutputChannel(name) {
      recorder.outputs.set(name, '');
      const add = (text) => {
        recorder.outputs.set(name, recorder.outputs.get(name) + text);
        changed.fire();
      };
      const line = (level) => (text, ...rest) => add(`${level}${[text, ...rest].join(' ')}\n`);
      return Object.assign(createdThing('output'), {
        name,
        logLevel: 2, // info
        onDidChangeLogLevel: noEvent,
        append: add,
        appendLine: line(''),
        replace: (text) => recorder.outputs.set(name, text),
        ...Object.fromEntries(['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, line(`[${level}] `)])),
      });
    },
    createStatusBarItem(id, alignment, priority) {
      let text = '';
      const item = {
        id,
        alignment,
        priority,
        visible: false,
        history: [], // every text it showed
        get text() {
          return text;
        },
        set text(value) {
          text = value;
          this.history.push(value);
          changed.fire();
        },
        show() {
          this.visible = true;
        },
        hide() {
          this.visible = false;
        },
        dispose() {
          this.visible = false;
        },
      };
      recorder.statusBarItems.push(item);
      return item;
    },
    async showTextDocument(document, options) {
      recorder.shown.push({ document, options });
      changed.fire();
      return { document };
    },
    async withProgress(_options, task) {
      return task({ report: () => undefined }, new CancellationTokenSource().token);
    },
    ...Object.fromEntries(
      ['error', 'warning', 'information'].map((kind) => [
        `show${kind[0].toUpperCase()}${kind.slice(1)}Message`,
        async (message, ...items) => {
          recorder.messages.push({ kind, message, items });
          changed.fire();
          return recorder.answers[kind];
        },
      ]),
    ),
    async showQuickPick(items) {
      return recorder.answers.quickPick(await items);
    },
  }, recorder);

  const languages = namespace('languages', {
    match(selector, document) {
      const filters = Array.isArray(selector) ? selector : [selector];
      return filters.some((f) => (typeof f === 'string' ? f === document.languageId : (!f.scheme || f.scheme === document.uri.scheme) && (!f.language || f.language === document.languageId)))
        ? 10
        : 0;
    },
    getDiagnostics: (uri) => (uri ? diagnostics.get(uri.toString()) ?? [] : [...diagnostics.entries()]),
    onDidChangeDiagnostics: diagnosticsChanged.event,
    createDiagnosticCollection(name) {
      const entries = new Map();
      return {
        name,
        set: (uri, list) => entries.set(uri.toString(), list ?? []),
        get: (uri) => entries.get(uri.toString()),
        has: (uri) => entries.has(uri.toString()),
        delete: (uri) => entries.delete(uri.toString()),
        clear: () => entries.clear(),
        forEach: (callback) => entries.forEach((list, uri) => callback(Uri.parse(uri), list)),
        dispose: () => entries.clear(),
      };
    },
  }, recorder);

  const tasks = namespace('tasks', { onDidEndTaskProcess: taskEnded.event }, recorder);

  const defined = {
    version: '1.91.0',
    env: { appName: 'Visual Studio Code', appRoot: '/', language: 'en', machineId: 'test', sessionId: 'test', uiKind: 1, openExternal: async () => true },
    commands,
    workspace,
    window,
    languages,
    tasks,
    extensions: namespace('extensions', { getExtension: () => undefined, all: [] }, recorder),
    Disposable,
    EventEmitter,
    Uri,
    Position,
    Range,
    Selection,
    InlineCompletionItem,
    InlineCompletionList,
    CodeActionKind,
    CancellationTokenSource,
    CancellationError: class CancellationError extends Error {},
    ThemeColor: valueClass('ThemeColor', ['id']),
    MarkdownString: valueClass('MarkdownString', ['value', 'supportThemeIcons']),
    SnippetString: valueClass('SnippetString', ['value']),
    Diagnostic: valueClass('Diagnostic', ['range', 'message', 'severity']),
    ShellExecution: valueClass('ShellExecution', ['commandLine', 'options']),
    ProcessExecution: valueClass('ProcessExecution', ['process', 'args', 'options']),
    TaskGroup: { Build: { id: 'build' }, Test: { id: 'test' } },
  };
  // every other class and enum of the API, from its type definitions: bundles copy a
  // module's own properties (esbuild's __toESM, TypeScript's __importStar), so they must exist
  const api = readFileSync(createRequire(import.meta.url).resolve('@types/vscode/index.d.ts'), 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
  for (const [, name] of api.matchAll(/^\s*export class (\w+)/gm)) {
    defined[name] ??= valueClass(name, ['a', 'b', 'c', 'd']);
  }
  for (const [, name, body] of api.matchAll(/^\s*export enum (\w+) \{([^}]*)\}/gm)) {
    let next = 0;
    defined[name] ??= Object.fromEntries(
      body.split(',').map((m) => m.trim()).filter(Boolean).map((member) => {
        const [key, value] = member.split('=').map((part) => part.trim());
        next = value === undefined ? next : Number(value);
        return [key, next++];
      }),
    );
  }
  return {
    vscode: defined,
    recorder,
    folder: workspaceFolder,
    fireDiagnostics(uri, list) {
      diagnostics.set(uri.toString(), list);
      diagnosticsChanged.fire({ uris: [uri] });
    },
    fireTaskEnd(event) {
      taskEnded.fire(event);
    },
    setActiveEditor(editor) {
      window.activeTextEditor = editor; // the proxy's target: plain property
      editorChanged.fire(editor);
    },
  };
}

/** Make `require('vscode')` return `vscode` from now on; returns `require` for the bundle. */
export function installStandIn(vscode) {
  const load = Module._load;
  Module._load = function (request, ...rest) {
    return request === 'vscode' ? vscode : load.call(this, request, ...rest);
  };
  return createRequire(fileURLToPath(import.meta.url));
}
