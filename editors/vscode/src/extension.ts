/**
 * The dmem VS Code extension: a thin launcher for the dmem-lsp language server.
 *
 * `activate` wires the pieces together: the language client (client.ts, started and
 * restarted by session.ts), the status bar (status.ts), the palette commands
 * (commands.ts), read-only markdown pages (documents.ts) and, when enabled, forwarding
 * of other tools' errors (forward.ts). Completions, explanations and memory are the server's.
 */
import * as vscode from 'vscode';
import { registerCommands } from './commands';
import { MarkdownDocuments } from './documents';
import { Forwarder } from './forward';
import { Session } from './session';
import { StatusBar } from './status';

let session: Session | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const output = vscode.window.createOutputChannel('dmem', { log: true });
  const documents = new MarkdownDocuments();
  session = new Session(output, new StatusBar(), documents);
  const current = session;
  context.subscriptions.push(
    output,
    current.status,
    vscode.workspace.registerTextDocumentContentProvider(MarkdownDocuments.scheme, documents),
    ...registerCommands(current),
    new Forwarder(
      (step) => current.notify('dmem/debugStep', step),
      (uri) => current.diagnostics(uri),
    ),
    vscode.workspace.onDidChangeConfiguration((event) => current.configurationChanged(event)),
  );
  void current.start();
}

export async function deactivate(): Promise<void> {
  await session?.close();
  session = undefined;
}
