// The session the extension has with the server, spoken with the libraries the language
// client is built on (vscode-languageserver-protocol over vscode-jsonrpc), against the real
// dmem-lsp: initialize as VS Code does, wait for the model, complete, accept, explain, the
// memory commands and notifications, shutdown and exit with code 0.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import protocol from 'vscode-languageserver-protocol/node';
import {
  configuration,
  makeWorkspace,
  OWN_COMMANDS,
  SERVER_COMMANDS,
  serverUnderTest,
  testSettings,
  TIMEOUT_MS,
  until,
  within,
} from './helpers.mjs';

const {
  createProtocolConnection,
  StreamMessageReader,
  StreamMessageWriter,
  InitializeRequest,
  InitializedNotification,
  ShutdownRequest,
  ExitNotification,
  DidOpenTextDocumentNotification,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  ExecuteCommandRequest,
  ConfigurationRequest,
  WorkDoneProgressCreateRequest,
  WorkDoneProgress,
  ShowMessageNotification,
  LogMessageNotification,
  MessageType,
} = protocol;

/** Much of what vscode-languageclient 10 announces from VS Code 1.91 (all that this server reads). */
const CAPABILITIES = {
  general: { positionEncodings: ['utf-16'], markdown: { parser: 'marked', version: '1.1.0' } },
  window: { workDoneProgress: true, showMessage: { messageActionItem: { additionalPropertiesSupport: true } }, showDocument: { support: true } },
  workspace: {
    applyEdit: true,
    configuration: true,
    workspaceFolders: true,
    didChangeConfiguration: { dynamicRegistration: true },
    didChangeWatchedFiles: { dynamicRegistration: true, relativePatternSupport: true },
    executeCommand: { dynamicRegistration: true },
    workspaceEdit: { documentChanges: true },
  },
  textDocument: {
    synchronization: { dynamicRegistration: true, willSave: true, willSaveWaitUntil: true, didSave: true },
    inlineCompletion: { dynamicRegistration: true },
    completion: {
      dynamicRegistration: true,
      contextSupport: true,
      completionItem: { snippetSupport: true, insertReplaceSupport: true, labelDetailsSupport: true },
      completionList: { itemDefaults: ['commitCharacters', 'editRange', 'insertTextFormat', 'insertTextMode', 'data'] },
    },
    codeAction: {
      dynamicRegistration: true,
      isPreferredSupport: true,
      disabledSupport: true,
      dataSupport: true,
      resolveSupport: { properties: ['edit'] },
      codeActionLiteralSupport: { codeActionKind: { valueSet: ['', 'quickfix', 'refactor', 'source'] } },
      honorsChangeAnnotations: false,
    },
    publishDiagnostics: { relatedInformation: true },
  },
};

const setup = serverUnderTest();

test('a whole session of the extension with the real server', { skip: setup.skip, timeout: 2 * TIMEOUT_MS }, async () => {
  const workspace = makeWorkspace();
  const settings = configuration(testSettings(setup)); // what VS Code's getConfiguration holds
  const [program, ...args] = setup.command;
  const server = spawn(program, args, { cwd: workspace.dir, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  server.stderr.on('data', (data) => (stderr += data));
  const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
  const connection = createProtocolConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));

  const seen = new EventEmitter(); // 'message' after anything below is recorded
  const statuses = [];
  const memory = [];
  const messages = [];
  const progress = [];
  const record = (list) => (params) => {
    list.push(params);
    seen.emit('message');
  };
  connection.onNotification('dmem/status', record(statuses));
  connection.onNotification('dmem/memory', record(memory));
  connection.onNotification(ShowMessageNotification.type, record(messages));
  connection.onNotification(LogMessageNotification.type, () => undefined);
  connection.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    connection.onProgress(WorkDoneProgress.type, token, record(progress));
    return null;
  });
  // the pull model, as the language client answers it: the whole `dmem` section
  connection.onRequest(ConfigurationRequest.type, ({ items }) => items.map((item) => (item.section ? settings[item.section] ?? null : settings)));
  connection.listen();

  const changes = (listener) => {
    seen.on('message', listener);
    return { dispose: () => seen.off('message', listener) };
  };
  const describe = () => `statuses: ${JSON.stringify(statuses)}\nstderr: ${stderr.slice(-3000)}`;
  const waitFor = (list, match, what) => until(changes, () => list.find(match), what, describe);
  const execute = (command, ...args) => within(connection.sendRequest(ExecuteCommandRequest.type, { command, arguments: args }), command);

  try {
    const result = await within(
      connection.sendRequest(InitializeRequest.type, {
        processId: process.pid,
        clientInfo: { name: 'Visual Studio Code', version: '1.91.0' },
        locale: 'en',
        rootPath: workspace.dir,
        rootUri: workspace.uri,
        workspaceFolders: [{ uri: workspace.uri, name: 'workspace' }],
        capabilities: CAPABILITIES,
        initializationOptions: { dmem: settings.dmem }, // as serverSettings() builds them
        trace: 'off',
      }),
      'initialize',
    );
    const capabilities = result.capabilities;
    assert.ok(capabilities.inlineCompletionProvider, 'inlineCompletionProvider');
    assert.ok(capabilities.codeActionProvider, 'codeActionProvider');
    // ghost text only: a completion popup would generate again and cancel the inline request
    assert.equal(capabilities.completionProvider, undefined, 'no completionProvider for a client with inline completion');
    const advertised = capabilities.executeCommandProvider.commands;
    assert.deepEqual([...advertised].sort(), [...SERVER_COMMANDS].sort());
    assert.deepEqual(advertised.filter((id) => OWN_COMMANDS.includes(id)), [], 'the extension must not register a command the server advertises');
    assert.equal(statuses.filter((s) => s.state === 'ready').length, 0, 'initialize is answered before the model loads');

    await connection.sendNotification(InitializedNotification.type, {});
    const status = await waitFor(statuses, (s) => s.state !== 'loading', 'dmem/status ready');
    assert.equal(status.state, 'ready', status.message);
    assert.equal(statuses[0].state, 'loading');
    assert.deepEqual([progress[0]?.kind, progress.at(-1)?.kind], ['begin', 'end'], 'the model loads under work-done progress');
    await waitFor(memory, (e) => e.event === 'opened' && e.folder === workspace.uri, 'the folder memory to open');

    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: workspace.fileUri, languageId: 'python', version: 1, text: workspace.text },
    });

    // ghost text, and accepting it
    const completions = await within(
      connection.sendRequest(InlineCompletionRequest.type, {
        textDocument: { uri: workspace.fileUri },
        position: { line: 3, character: 11 },
        context: { triggerKind: InlineCompletionTriggerKind.Invoked },
      }),
      'inline completion',
    );
    const items = Array.isArray(completions) ? completions : completions.items;
    assert.equal(items.length, 1);
    const [item] = items;
    assert.ok(typeof item.insertText === 'string' && item.insertText.length > 0, `insertText ${JSON.stringify(item.insertText)}`);
    assert.equal(item.command.command, 'dmem.acceptCompletion');
    assert.deepEqual(item.command.arguments, [workspace.fileUri, item.insertText]);
    const before = memory.length;
    assert.equal(await execute(item.command.command, ...item.command.arguments), null);
    const accepted = await waitFor(memory, (e, i) => i >= before && e.event === 'written' && e.kind === 'accepted completion', 'the accepted completion to be written');
    assert.equal(accepted.store, 'edits');

    // explain, as "Explain selection" asks it
    const explanation = await within(
      connection.sendRequest('dmem/explain', {
        textDocument: { uri: workspace.fileUri },
        range: { start: { line: 2, character: 0 }, end: { line: 4, character: 0 } },
      }),
      'dmem/explain',
    );
    assert.ok(typeof explanation.markdown === 'string' && explanation.markdown.length > 0);

    // memory commands, with the arguments the palette commands send
    const status1 = await execute('dmem.memoryStatus');
    const [folder] = status1.folders;
    assert.equal(folder.folder, workspace.uri);
    assert.deepEqual(Object.keys(folder.stores).sort(), ['conventions', 'debug', 'edits']);
    assert.ok(folder.stores.edits.tokens > 0 && folder.stores.conventions.tokens > 0);
    // the page every client shows: a row per store, the adapter
    assert.ok(status1.markdown.startsWith('# dmem memory\n'), status1.markdown);
    assert.ok(status1.markdown.includes(`| edits | ${folder.stores.edits.tokens} |`), status1.markdown);
    assert.match(status1.markdown, /Adapter: `[^`]+`/);
    const remembered = await execute('dmem.rememberDebugStep', workspace.fileUri, 'ZeroDivisionError: division by zero in add()');
    assert.ok(remembered.tokens > 0);
    assert.deepEqual(await execute('dmem.resetMemory', 'debug'), { folders: [workspace.uri], stores: ['debug'] });
    const status2 = await execute('dmem.memoryStatus', workspace.uri);
    assert.equal(status2.folders[0].stores.debug.tokens, 0);
    assert.ok(status2.markdown.includes('| debug | 0 |'), status2.markdown);
    assert.equal(status2.folders[0].stores.edits.tokens, folder.stores.edits.tokens);

    // what forwarding sends
    const mark = memory.length;
    await connection.sendNotification('dmem/debugStep', { uri: workspace.fileUri, text: 'app.py:4:5: error (pyright): "c" is not defined', kind: 'diagnostic' });
    const written = await waitFor(memory, (e, i) => i >= mark && e.event === 'written' && e.kind === 'diagnostic', 'the debug step to be written');
    assert.equal(written.store, 'debug');
    assert.ok(written.tokens.debug > 0);

    assert.deepEqual(messages.filter((m) => m.type <= MessageType.Warning), [], 'no warnings: every setting the extension sends is known');
    await within(connection.sendRequest(ShutdownRequest.type), 'shutdown');
    await connection.sendNotification(ExitNotification.type);
    assert.deepEqual(await within(exited, 'the server to exit'), { code: 0, signal: null });
  } finally {
    connection.dispose();
    if (server.exitCode === null) {
      server.kill();
    }
  }
});
