/**
 * With `dmem.client.forwardDiagnostics` on, debugging steps the editor sees go to the
 * server as `dmem/debugStep` notifications, which writes them into the `debug` store:
 * errors from every other language server (deduplicated, debounced) and tasks that end
 * with a non-zero exit code (kind "test" for tasks in the Test group). VS Code gives
 * extensions no access to test results outside the Testing view (a proposed API), so
 * failed tests are seen through their tasks.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { clientSettings } from './settings';

const DEBOUNCE_MS = 1500;
const REMEMBERED = 2000;

export interface DebugStep {
  uri?: string;
  text: string;
  kind: string;
}

export class Forwarder implements vscode.Disposable {
  private readonly pending = new Set<string>();
  private readonly sent = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private readonly subscriptions: vscode.Disposable[];

  /** `own(uri)`: the diagnostics this server published there (never sent back to it). */
  constructor(
    private readonly send: (step: DebugStep) => void,
    private readonly own: (uri: vscode.Uri) => readonly vscode.Diagnostic[],
  ) {
    this.subscriptions = [
      vscode.languages.onDidChangeDiagnostics((event) => this.diagnosticsChanged(event)),
      vscode.tasks.onDidEndTaskProcess((event) => this.taskEnded(event)),
    ];
  }

  private diagnosticsChanged(event: vscode.DiagnosticChangeEvent): void {
    if (!clientSettings().forwardDiagnostics) {
      return;
    }
    for (const uri of event.uris) {
      if (uri.scheme === 'file' && vscode.workspace.getWorkspaceFolder(uri)) {
        this.pending.add(uri.toString());
      }
    }
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), DEBOUNCE_MS);
  }

  private flush(): void {
    for (const key of this.pending) {
      const uri = vscode.Uri.parse(key);
      const own = new Set(this.own(uri).map((d) => identity(key, d)));
      const errors = vscode.languages
        .getDiagnostics(uri)
        .filter((d) => d.severity === vscode.DiagnosticSeverity.Error)
        .filter((d) => !own.has(identity(key, d)) && !this.sent.has(identity(key, d)));
      if (errors.length > 0) {
        errors.forEach((d) => this.sent.add(identity(key, d)));
        this.send({ uri: key, text: describe(uri, errors), kind: 'diagnostic' });
      }
    }
    this.pending.clear();
    if (this.sent.size > REMEMBERED) {
      this.sent.clear();
    }
  }

  private taskEnded({ execution, exitCode }: vscode.TaskProcessEndEvent): void {
    if (!clientSettings().forwardDiagnostics || !exitCode) {
      return;
    }
    const task = execution.task;
    const run = task.execution;
    const command =
      run instanceof vscode.ShellExecution
        ? run.commandLine ?? [run.command, ...(run.args ?? [])].map((part) => (typeof part === 'string' ? part : part.value)).join(' ')
        : run instanceof vscode.ProcessExecution
          ? [run.process, ...run.args].join(' ')
          : '';
    const kind = task.group?.id === vscode.TaskGroup.Test.id ? 'test' : 'task';
    const folder = typeof task.scope === 'object' ? task.scope.uri.toString() : undefined;
    const text = `${kind === 'test' ? 'Test task' : 'Task'} "${task.name}" (${task.source}) failed with exit code ${exitCode}${command ? `: ${command}` : ''}`;
    this.send({ uri: folder, text, kind });
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.subscriptions.forEach((s) => s.dispose());
  }
}

function identity(uri: string, d: vscode.Diagnostic): string {
  return `${uri}\n${d.range.start.line}\n${d.source ?? ''}\n${d.message}`;
}

/** `file:line:col: error (source): message`, with the offending line when the file is open. */
function describe(uri: vscode.Uri, errors: vscode.Diagnostic[]): string {
  const folder = vscode.workspace.getWorkspaceFolder(uri);
  const name = folder ? path.relative(folder.uri.fsPath, uri.fsPath) : uri.fsPath;
  const document = vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri.toString());
  return errors
    .map((d) => {
      const where = `${name}:${d.range.start.line + 1}:${d.range.start.character + 1}`;
      const line = document && d.range.start.line < document.lineCount ? `\n    ${document.lineAt(d.range.start.line).text.trim()}` : '';
      return `${where}: error${d.source ? ` (${d.source})` : ''}: ${d.message}${line}`;
    })
    .join('\n');
}
