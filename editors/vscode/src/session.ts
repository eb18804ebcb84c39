/**
 * The server's life cycle: start the language client, stop it, restart it when a setting
 * read at start-up changes (model, adapter, device, quantization, the server command), and
 * push every other change of the `dmem` section to the running server.
 *
 * A restart makes a new client, because the server command is fixed when a client is made.
 */
import * as vscode from 'vscode';
import { DidChangeConfigurationNotification, ExecuteCommandRequest, LanguageClient, State } from 'vscode-languageclient/node';
import { createClient } from './client';
import { MarkdownDocuments } from './documents';
import { clientSettings, needsRestart, SECTION, serverSettings } from './settings';
import { MemoryEvent, StatusBar } from './status';

/** How long the server gets to answer `shutdown` (it saves every folder's memory then). */
const STOP_TIMEOUT_MS = 4000;

/** `dmem.memoryStatus`, the parts the extension reads: the page the server writes, and per
 * folder its tokens per store (the status bar, the reset's choices). */
export interface MemoryStatus {
  folders: {
    folder: string;
    stores: Record<string, { tokens: number }>;
  }[];
  /** The status page (markdown), the same in every editor and in `dmem-lsp memory status`. */
  markdown: string;
}

export class Session implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private starting: Promise<void> | undefined;
  /** Restarts run one after the other (settings can change twice in a row). */
  private restarts: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    readonly output: vscode.LogOutputChannel,
    readonly status: StatusBar,
    readonly documents: MarkdownDocuments,
  ) {}

  start(): Promise<void> {
    if (this.closed) {
      return Promise.resolve();
    }
    const client = createClient(this.output, {
      status: (status) => {
        this.status.status(status);
        if (status.state === 'ready') {
          void this.memoryStatus().catch(() => undefined); // dmem/memory events follow anyway
        }
      },
      memory: (event) => this.status.memory([event]),
      progress: (message) => this.status.progress(message),
    });
    this.client = client;
    client.onDidChangeState(({ newState }) => {
      if (this.client !== client) {
        return;
      }
      if (newState === State.Starting) {
        this.status.set('starting', 'starting the server');
      } else if (newState === State.Stopped && this.status.state !== 'error') {
        this.status.set('stopped', 'the server stopped (see "dmem: Show output")');
      }
    });
    this.status.set('starting', 'starting the server');
    this.starting = client.start().catch((error) => {
      const { serverPath } = clientSettings();
      this.status.set('error', `cannot start ${serverPath}: ${messageOf(error)}`);
    });
    return this.starting;
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    await this.starting;
    if (client?.needsStop()) {
      await client.stop(STOP_TIMEOUT_MS).catch((error) => this.output.appendLine(`stopping dmem-lsp: ${messageOf(error)}`));
    }
  }

  restart(): Promise<void> {
    this.restarts = this.restarts.then(async () => {
      await this.stop();
      await this.start();
    });
    return this.restarts;
  }

  /** Stop for good (deactivation): a restart still queued starts nothing. */
  async close(): Promise<void> {
    this.closed = true;
    await this.restarts;
    await this.stop();
  }

  /** The running client, or an error saying what to do. */
  running(): LanguageClient {
    if (!this.client?.isRunning()) {
      throw new Error(`dmem-lsp is not running (${this.status.message}); see "dmem: Show output"`);
    }
    return this.client;
  }

  /** Run one of the server's commands (workspace/executeCommand). */
  execute<T>(command: string, ...args: unknown[]): Promise<T> {
    return this.running().sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
  }

  /** What this server published as diagnostics for `uri` (none today: kept out of forwarding). */
  diagnostics(uri: vscode.Uri): readonly vscode.Diagnostic[] {
    return this.client?.diagnostics?.get(uri) ?? [];
  }

  notify(method: string, params: unknown): void {
    if (this.client?.isRunning()) {
      void this.client.sendNotification(method, params);
    }
  }

  /** `dmem.memoryStatus`, also shown in the status bar. */
  async memoryStatus(): Promise<MemoryStatus> {
    const result = await this.execute<MemoryStatus>('dmem.memoryStatus');
    const events: MemoryEvent[] = result.folders.map(({ folder, stores }) => ({
      folder,
      tokens: Object.fromEntries(Object.entries(stores).map(([store, { tokens }]) => [store, tokens])),
    }));
    this.status.memory(events);
    return result;
  }

  configurationChanged(event: vscode.ConfigurationChangeEvent): void {
    if (!event.affectsConfiguration(SECTION)) {
      return;
    }
    if (needsRestart(event)) {
      this.output.appendLine('dmem: a setting read at start-up changed; restarting the server');
      void this.restart();
    } else if (this.client?.isRunning()) {
      void this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: serverSettings() });
    }
  }

  dispose(): void {
    void this.close();
  }
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
