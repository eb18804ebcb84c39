/**
 * The language client: how the server is started (stdio, the command from
 * `dmem.client.serverPath`/`serverArgs`) and what the extension listens to.
 *
 * The client's id is `dmem.client`, so its trace setting is `dmem.client.trace.server` and
 * stays out of the settings the server reads. The language client registers the server's
 * commands (dmem.explain, dmem.acceptCompletion, ...) itself; the extension never does.
 * vscode-languageclient 10 is needed: 9 sends VS Code's inline completion trigger kinds
 * (0, 1) where LSP 3.18 has 1, 2, and the server refuses 0.
 */
import * as vscode from 'vscode';
import { LanguageClient, LanguageClientOptions, ServerOptions } from 'vscode-languageclient/node';
import { clientSettings, serverCommand, serverSettings } from './settings';
import type { MemoryEvent, ServerStatus } from './status';

export const EXPLAIN_COMMAND = 'dmem.explain';

export interface Listeners {
  status(status: ServerStatus): void;
  memory(event: MemoryEvent): void;
  /** A work-done progress message from the server (it reports model loading this way). */
  progress(message: string): void;
}

export function createClient(output: vscode.LogOutputChannel, listeners: Listeners): LanguageClient {
  const { serverPath, serverArgs } = clientSettings();
  // stdio, without a transport: TransportKind.stdio would append `--stdio`, which dmem-lsp refuses
  const server: ServerOptions = { command: serverCommand(serverPath), args: serverArgs };
  const options: LanguageClientOptions = {
    documentSelector: [{ scheme: 'file' }],
    initializationOptions: serverSettings, // a function: read again when the client restarts a crashed server
    outputChannel: output,
    middleware: {
      handleWorkDoneProgress(token, params, next) {
        if (params.message) {
          listeners.progress(params.message);
        }
        next(token, params);
      },
      // `dmem.explain` (the "Explain with dmem" code action) answers at once; the server then
      // opens the explanation's markdown file through window/showDocument
    },
  };
  const client = new LanguageClient('dmem.client', 'dmem-lsp', server, options);
  client.onNotification('dmem/status', listeners.status);
  client.onNotification('dmem/memory', listeners.memory);
  return client;
}
