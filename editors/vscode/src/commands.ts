/**
 * The palette commands. Their IDs are the extension's own: the server's commands
 * (dmem.explain, dmem.rememberDebugStep, dmem.acceptCompletion, dmem.resetMemory,
 * dmem.memoryStatus) are registered by the language client, and registering one of them
 * here too would make start-up fail. These call the server through the client.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { LSPErrorCodes, ResponseError } from 'vscode-languageclient/node';
import { runDoctor } from './doctor';
import { messageOf, Session } from './session';

export function registerCommands(session: Session): vscode.Disposable[] {
  const commands: Record<string, () => Promise<unknown>> = {
    'dmem.explainSelection': () => explainSelection(session),
    'dmem.rememberSelection': () => rememberSelection(session),
    'dmem.showMemoryStatus': () => showMemoryStatus(session),
    'dmem.resetMemoryPick': () => resetMemory(session),
    'dmem.restartServer': () => session.restart(),
    'dmem.showOutput': async () => session.output.show(),
    'dmem.runDoctor': () => runDoctor(session.output),
    'dmem.showStatus': () => showStatus(session),
  };
  return Object.entries(commands).map(([id, run]) =>
    vscode.commands.registerCommand(id, () =>
      run().catch((error) => {
        if (!(error instanceof ResponseError && error.code === LSPErrorCodes.RequestCancelled)) {
          void vscode.window.showErrorMessage(`dmem: ${messageOf(error)}`);
        }
      }),
    ),
  );
}

function activeEditor(): vscode.TextEditor {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    throw new Error('open a file and select some code first');
  }
  return editor;
}

async function explainSelection(session: Session): Promise<void> {
  const editor = activeEditor();
  const client = session.running();
  const params = {
    textDocument: { uri: client.code2ProtocolConverter.asUri(editor.document.uri) },
    range: client.code2ProtocolConverter.asRange(editor.selection),
  };
  const title = `Explanation of ${path.basename(editor.document.fileName)}:${editor.selection.start.line + 1}`;
  const result = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'dmem: explaining…', cancellable: true },
    (_progress, token) => client.sendRequest<{ markdown: string }>('dmem/explain', params, token),
  );
  await session.documents.show(title, result.markdown);
}

async function rememberSelection(session: Session): Promise<void> {
  const editor = activeEditor();
  const selection = editor.selection;
  const text = selection.isEmpty ? editor.document.lineAt(selection.active.line).text : editor.document.getText(selection);
  const uri = session.running().code2ProtocolConverter.asUri(editor.document.uri);
  const { tokens, reason, redacted } = await session.execute<{ tokens: number; reason?: string; redacted?: string[] }>(
    'dmem.rememberDebugStep',
    uri,
    text,
  );
  if (tokens > 0) {
    const note = redacted?.length ? ` (redacted: ${redacted.join(', ')})` : '';
    void vscode.window.showInformationMessage(`dmem remembered ${tokens} tokens as a debugging step${note}`);
  } else {
    void vscode.window.showWarningMessage(`dmem wrote nothing: ${reason ?? 'memory is off'}`);
  }
}

async function showMemoryStatus(session: Session): Promise<void> {
  await session.documents.show('dmem memory', (await session.memoryStatus()).markdown);
}

interface Choice<T> extends vscode.QuickPickItem {
  value: T;
}

async function resetMemory(session: Session): Promise<void> {
  const { folders } = await session.memoryStatus();
  if (folders.length === 0) {
    throw new Error('no workspace folder has a memory (open a folder)');
  }
  const total = (store?: string) =>
    folders.flatMap((f) => Object.entries(f.stores)).reduce((sum, [name, s]) => sum + (!store || name === store ? s.tokens : 0), 0);
  const stores: Choice<string | undefined>[] = [
    { label: 'All stores', description: `${total()} tokens`, value: undefined },
    ...Object.keys(folders[0].stores).map((store) => ({ label: store, description: `${total(store)} tokens`, value: store })),
  ];
  const store = await vscode.window.showQuickPick(stores, { placeHolder: 'Reset which store of the memory?' });
  if (!store) {
    return;
  }
  let folder: Choice<string | undefined> | undefined = { label: 'every folder', value: undefined };
  if (folders.length > 1) {
    folder = await vscode.window.showQuickPick(
      [folder, ...folders.map((f) => ({ label: vscode.Uri.parse(f.folder).fsPath, value: f.folder }))],
      { placeHolder: 'Reset the memory of which workspace folder?' },
    );
    if (!folder) {
      return;
    }
  }
  const what = `${store.value ?? 'every store'} of ${folder.value ? folder.label : 'the workspace'}`;
  const answer = await vscode.window.showWarningMessage(`Reset ${what}? It cannot be undone.`, { modal: true }, 'Reset');
  if (answer !== 'Reset') {
    return;
  }
  const args = folder.value ? [store.value ?? null, folder.value] : store.value ? [store.value] : [];
  await session.execute('dmem.resetMemory', ...args);
  void vscode.window.showInformationMessage(`dmem: reset ${what}`);
}

async function showStatus(session: Session): Promise<void> {
  const { state, message } = session.status;
  if (state === 'error' || state === 'stopped') {
    const choice = await vscode.window.showErrorMessage(`dmem-lsp: ${message}`, 'Run dmem-lsp doctor', 'Show output', 'Restart server');
    const actions: Record<string, () => Promise<unknown> | void> = {
      'Run dmem-lsp doctor': () => runDoctor(session.output),
      'Show output': () => session.output.show(),
      'Restart server': () => session.restart(),
    };
    await actions[choice ?? '']?.();
    return;
  }
  const choice = await vscode.window.showInformationMessage(`dmem-lsp: ${state} (${message})`, 'Memory status', 'Show output');
  if (choice === 'Memory status') {
    await showMemoryStatus(session);
  } else if (choice === 'Show output') {
    session.output.show();
  }
}
