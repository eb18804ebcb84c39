/**
 * The status bar item: the server's state (starting, loading with its progress text, ready,
 * error, stopped) and the size of the memory, in tokens, of the active editor's workspace
 * folder. It shows only what the server reports: `dmem/status`, `dmem/memory` and
 * `dmem.memoryStatus`. Clicking it runs `dmem.showStatus`.
 */
import * as vscode from 'vscode';

/** `dmem/status`. */
export interface ServerStatus {
  state: 'loading' | 'ready' | 'error';
  message: string;
  model?: string;
  adapter?: string;
  device?: string;
  quantization?: string;
}

/** `dmem/memory` (and one folder of `dmem.memoryStatus`, reduced to its tokens). */
export interface MemoryEvent {
  folder: string;
  event?: string;
  tokens: Record<string, number>;
}

export type State = 'starting' | ServerStatus['state'] | 'stopped';

const ICONS: Record<State, string> = {
  starting: '$(sync~spin)',
  loading: '$(sync~spin)',
  ready: '$(database)',
  error: '$(error)',
  stopped: '$(debug-stop)',
};

export class StatusBar implements vscode.Disposable {
  readonly item = vscode.window.createStatusBarItem('dmem.status', vscode.StatusBarAlignment.Right, 100);
  state: State = 'starting';
  message = 'starting the server';
  server: ServerStatus | undefined;
  /** Tokens per store, by the folder's file system path. */
  private readonly tokens = new Map<string, Record<string, number>>();
  private readonly editorChanged = vscode.window.onDidChangeActiveTextEditor(() => this.render());

  constructor() {
    this.item.name = 'dmem';
    this.item.command = 'dmem.showStatus';
    this.render();
    this.item.show();
  }

  set(state: State, message: string): void {
    this.state = state;
    this.message = message;
    if (state === 'starting') {
      this.tokens.clear();
    }
    this.render();
  }

  status(status: ServerStatus): void {
    this.server = status;
    this.set(status.state, status.message);
  }

  progress(message: string): void {
    if (this.state === 'starting' || this.state === 'loading') {
      this.set('loading', message);
    }
  }

  memory(events: MemoryEvent[]): void {
    for (const { folder, tokens } of events) {
      this.tokens.set(vscode.Uri.parse(folder).fsPath, tokens);
    }
    this.render();
  }

  /** The active editor's folder (the first folder without an editor) and its tokens per store. */
  activeMemory(): [vscode.WorkspaceFolder, Record<string, number> | undefined] | undefined {
    const uri = vscode.window.activeTextEditor?.document.uri;
    const folder = (uri && vscode.workspace.getWorkspaceFolder(uri)) || vscode.workspace.workspaceFolders?.[0];
    return folder && [folder, this.tokens.get(folder.uri.fsPath)];
  }

  private render(): void {
    const [folder, stores] = this.activeMemory() ?? [];
    const total = stores && Object.values(stores).reduce((sum, n) => sum + n, 0);
    let text = `${ICONS[this.state]} dmem`;
    if (this.state === 'ready') {
      text += total === undefined ? '' : ` ${total.toLocaleString('en-US')} tokens`;
    } else {
      text += `: ${this.state === 'loading' ? shorten(this.message) : this.state}`;
    }
    this.item.text = text;
    const lines = [`dmem-lsp: ${this.state}${this.message ? ` (${this.message})` : ''}`];
    if (this.server?.model) {
      lines.push(`model ${this.server.model}, adapter ${this.server.adapter}, ${this.server.device}, quantization ${this.server.quantization}`);
    }
    if (folder && stores) {
      const parts = Object.entries(stores).map(([store, n]) => `${store} ${n}`);
      lines.push(`memory of ${folder.name}: ${parts.join(', ')} tokens`);
    }
    lines.push(this.state === 'error' ? 'Click for the error and dmem-lsp doctor' : 'Click for details');
    this.item.tooltip = lines.join('\n');
    this.item.backgroundColor = this.state === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  }

  dispose(): void {
    this.editorChanged.dispose();
    this.item.dispose();
  }
}

function shorten(text: string, length = 40): string {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}
