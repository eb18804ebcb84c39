// The bundled extension (dist/extension.js) activated in plain Node against a stand-in for
// the `vscode` module, with the real vscode-languageclient starting the real server. It
// catches what only shows at start-up: a command registered twice (the stand-in refuses
// it, as VS Code does), the inline completion provider missing, or the item's command lost
// on the way to the ghost text. Then the palette commands, forwarding, restarts, a server
// command that is not there, doctor, and a clean stop.
import assert from 'node:assert/strict';
import childProcess from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { configuration, makeWorkspace, OWN_COMMANDS, SERVER_COMMANDS, serverUnderTest, testSettings, TIMEOUT_MS, until, within } from './helpers.mjs';
import { createStandIn, installStandIn, Position, Range, Selection, textDocument, Uri } from './vscode-stand-in.mjs';

const setup = serverUnderTest();
const BUNDLE = fileURLToPath(new URL('../dist/extension.js', import.meta.url));

/** Every process the extension starts (the language client spawns the server). */
const spawned = [];
const servers = () => spawned.filter(({ child }) => !child.spawnargs.includes('doctor'));
const spawn = childProcess.spawn;
childProcess.spawn = function (...args) {
  const child = spawn.apply(this, args);
  spawned.push({ child, exited: new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal }))) });
  return child;
};

test('the bundled extension activates, starts the server through the language client and stops it', { skip: setup.skip, timeout: 3 * TIMEOUT_MS }, async (t) => {
  const workspace = makeWorkspace();
  const document = textDocument(Uri.file(workspace.file), 'python', workspace.text);
  const stand = createStandIn({ settings: configuration(testSettings(setup)), folder: workspace.dir, documents: [document] });
  const { vscode, recorder } = stand;
  const extension = installStandIn(vscode)(BUNDLE);
  const describe = () => `status bar: ${recorder.statusBarItems[0]?.text}\nmessages: ${JSON.stringify(recorder.messages)}\noutput:\n${[...recorder.outputs.values()].join('\n').slice(-4000)}`;
  const wait = (predicate, what) => until(recorder.onChange, predicate, what, describe);
  const statusText = () => recorder.statusBarItems[0].text;
  const ready = () => {
    assert.doesNotMatch(statusText(), /\$\(error\)|stopped/, describe());
    return statusText().startsWith('$(database)');
  };
  const tokens = () => Number(/([\d,]+) tokens/.exec(statusText())?.[1].replace(/,/g, '') ?? NaN);
  const context = { subscriptions: [], extensionPath: fileURLToPath(new URL('..', import.meta.url)) };

  let failed = false; // the steps build on each other: after a failure, skip the rest
  const step = (name, fn) =>
    t.test(name, async (s) => {
      if (failed) {
        s.skip('an earlier step failed');
        return;
      }
      try {
        await fn();
      } catch (error) {
        failed = true;
        throw error;
      }
    });

  t.after(() => extension.deactivate()); // stops the server whatever happened (a no-op once deactivated)
  extension.activate(context);

  await step('palette commands and the status bar item', () => {
    for (const id of OWN_COMMANDS) {
      assert.ok(recorder.commands.has(id), `${id} is registered`);
    }
    assert.equal(recorder.statusBarItems.length, 1);
    assert.ok(recorder.statusBarItems[0].visible);
    assert.equal(recorder.statusBarItems[0].command, 'dmem.showStatus');
  });

  await step('the client starts the server and registers its features, each command once', async () => {
    await wait(ready, 'the status bar to say ready');
    assert.deepEqual(recorder.duplicates, []);
    for (const id of SERVER_COMMANDS) {
      assert.ok(recorder.commands.has(id), `the language client registered ${id}`);
    }
    assert.equal(recorder.registered('languages.registerInlineCompletionItemProvider').length, 1);
    assert.equal(servers().length, 1);
    assert.deepEqual(servers()[0].child.spawnargs, setup.command);
    const history = recorder.statusBarItems[0].history;
    assert.ok(history.includes('$(sync~spin) dmem: attaching δ-mem'), `the loading progress is shown: ${history}`);
    await wait(() => tokens() > 0, 'the folder memory (its README) in the status bar');
  });

  const inline = () => recorder.registered('languages.registerInlineCompletionItemProvider')[0];
  const invoke = (kind) =>
    within(
      inline()[1].provideInlineCompletionItems(document, new Position(3, 11), { triggerKind: kind, selectedCompletionInfo: undefined }, new vscode.CancellationTokenSource().token),
      'inline completion',
    );

  await step('ghost text keeps the server command, and accepting it teaches the server', async () => {
    assert.ok(vscode.languages.match(inline()[0], document) > 0, 'the document selector covers files');
    for (const kind of [vscode.InlineCompletionTriggerKind.Invoke, vscode.InlineCompletionTriggerKind.Automatic]) {
      const result = await invoke(kind);
      const [item] = result.items ?? result;
      assert.ok(typeof item.insertText === 'string' && item.insertText.length > 0, `trigger kind ${kind}: ${JSON.stringify(result)}`);
      assert.equal(item.command.command, 'dmem.acceptCompletion');
      assert.deepEqual(item.command.arguments, [workspace.fileUri, item.insertText]);
    }
    const [item] = (await invoke(vscode.InlineCompletionTriggerKind.Invoke)).items;
    const before = tokens();
    await within(vscode.commands.executeCommand(item.command.command, ...item.command.arguments), 'accepting');
    await wait(() => tokens() > before, 'the accepted completion in the memory');
  });

  const editor = { document, selection: new Selection(new Position(2, 0), new Position(4, 0)) };
  editor.selections = [editor.selection];
  stand.setActiveEditor(editor);
  const shown = () => recorder.shown.at(-1)?.document.getText() ?? '';

  await step('Explain selection shows the markdown beside', async () => {
    const count = recorder.shown.length;
    await within(vscode.commands.executeCommand('dmem.explainSelection'), 'explain');
    assert.equal(recorder.shown.length, count + 1, describe());
    const { document: page, options } = recorder.shown.at(-1);
    assert.equal(page.uri.scheme, 'dmem');
    assert.equal(options.viewColumn, vscode.ViewColumn.Beside);
    assert.ok(shown().length > 0);
  });

  await step('the code action command opens its explanation (window/showDocument)', async () => {
    const count = recorder.shown.length;
    const range = { start: { line: 2, character: 0 }, end: { line: 3, character: 0 } };
    const result = await within(vscode.commands.executeCommand('dmem.explain', workspace.fileUri, range), 'dmem.explain');
    assert.equal(result ?? null, null); // it answers at once; the explanation follows
    await wait(() => recorder.shown.length > count, 'the explanation to open');
    const { document: page, options } = recorder.shown.at(-1);
    assert.match(page.fsPath, /-3-3\.md$/);
    assert.equal(options.preserveFocus, false);
  });

  await step('Remember selection, Memory status and Reset memory', async () => {
    const before = tokens();
    await within(vscode.commands.executeCommand('dmem.rememberSelection'), 'remember');
    assert.match(recorder.messages.at(-1).message, /remembered \d+ tokens/);
    assert.ok(tokens() > before);

    await within(vscode.commands.executeCommand('dmem.showMemoryStatus'), 'memory status');
    assert.match(shown(), /# dmem memory/);
    assert.match(shown(), /\| debug \| [1-9]/);
    assert.match(shown(), /Adapter: `[^`]+`/); // the folder's adapter (no .dmem/config.toml here)

    recorder.answers.warning = 'Reset'; // confirm the modal question
    recorder.answers.quickPick = (items) => items.find((item) => item.label === 'debug');
    await within(vscode.commands.executeCommand('dmem.resetMemoryPick'), 'reset debug');
    assert.match(recorder.messages.at(-1).message, /reset debug/);
    recorder.answers.quickPick = (items) => items[0]; // all stores
    await within(vscode.commands.executeCommand('dmem.resetMemoryPick'), 'reset all');
    assert.equal(tokens(), 0);
  });

  await step('with forwardDiagnostics on, errors and failed tasks reach the debug memory', async () => {
    await vscode.workspace.getConfiguration('dmem.client').update('forwardDiagnostics', true);
    const error = new vscode.Diagnostic(new Range(3, 11, 3, 12), '"c" is not defined', vscode.DiagnosticSeverity.Error);
    error.source = 'pyright';
    const warning = new vscode.Diagnostic(new Range(0, 0, 0, 9), 'unused import', vscode.DiagnosticSeverity.Warning);
    stand.fireDiagnostics(document.uri, [error, warning]);
    await wait(() => tokens() > 0, 'the forwarded diagnostic in the memory');
    const afterDiagnostic = tokens();
    const task = { name: 'pytest', source: 'shell', group: vscode.TaskGroup.Test, scope: stand.folder, execution: new vscode.ShellExecution('pytest -x') };
    stand.fireTaskEnd({ execution: { task }, exitCode: 1 });
    await wait(() => tokens() > afterDiagnostic, 'the failed test task in the memory');
  });

  const output = () => recorder.outputs.get('dmem');
  const last = () => servers().at(-1);
  /**
   * The client stopped the server: `shutdown` was answered in time (the server saves every
   * memory before it answers), `exit` sent, the process gone. vscode-languageclient kills a
   * server still running 2 s after `exit`; dmem-lsp's interpreter teardown takes about 1 s,
   * more on a loaded machine, so that kill is reported, not failed.
   */
  const stopped = async (server, what) => {
    const { code, signal } = await within(server.exited, what);
    assert.doesNotMatch(output(), /Stopping server (timed out|failed)/);
    if (signal === 'SIGKILL') {
      t.diagnostic(`${what}: killed by the language client 2 s after exit (slow interpreter teardown)`);
    } else {
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, what);
    }
  };

  await step('Restart server: a new server, still no command registered twice', async () => {
    await within(vscode.commands.executeCommand('dmem.restartServer'), 'restart');
    await wait(ready, 'the restarted server to be ready');
    assert.deepEqual(recorder.duplicates, []);
    assert.equal(servers().length, 2);
    await stopped(servers()[0], 'the first server');
  });

  await step('a server command that is not there: the error, and doctor says so', async () => {
    const running = last();
    await vscode.workspace.getConfiguration('dmem.client').update('serverPath', '/nonexistent/dmem-lsp');
    await wait(() => statusText().startsWith('$(error)'), 'the status bar to show the error');
    await stopped(running, 'the second server');
    recorder.answers.error = 'Run dmem-lsp doctor';
    await within(vscode.commands.executeCommand('dmem.showStatus'), 'clicking the status bar');
    assert.match(recorder.messages.at(-1).message, /dmem-lsp: cannot start \/nonexistent\/dmem-lsp/);
    assert.deepEqual(recorder.messages.at(-1).items, ['Run dmem-lsp doctor', 'Show output', 'Restart server']);
    assert.match(output(), /\/nonexistent\/dmem-lsp was not found/);
  });

  await step('changing how the server starts restarts it; doctor reports what it would load', async () => {
    const client = { ...vscode.workspace.getConfiguration('dmem').get('client'), serverPath: setup.command[0], serverArgs: [...setup.command.slice(1), '-v'] };
    await vscode.workspace.getConfiguration('dmem').update('client', client);
    await wait(() => last().child.spawnargs.includes('-v') && ready(), 'the server started with the new arguments');
    assert.deepEqual(last().child.spawnargs, [...setup.command, '-v']);
    assert.deepEqual(recorder.duplicates, []);
    await within(vscode.commands.executeCommand('dmem.runDoctor'), 'doctor');
    assert.match(output(), /would run on: cpu/);
    assert.match(output(), new RegExp(`model ${setup.model}: local directory`));
  });

  await step('deactivate stops the server cleanly', async () => {
    await within(extension.deactivate(), 'deactivate');
    context.subscriptions.forEach((s) => s.dispose());
    await stopped(last(), 'the last server');
    const shownByServer = recorder.messages.filter((m) => m.kind !== 'information' && !m.items[0]?.modal && !m.message.includes('/nonexistent/'));
    assert.deepEqual(shownByServer, [], 'no warnings or errors (the reset question and the missing command aside)');
    for (const id of SERVER_COMMANDS) {
      assert.ok(!recorder.commands.has(id), `${id} is unregistered once the client stops`);
    }
  });
});
