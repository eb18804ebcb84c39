/**
 * The `dmem` settings section, as the extension reads it.
 *
 * Everything under `dmem` goes to the server unchanged, as `{dmem: {...}}`, in
 * initializationOptions and workspace/didChangeConfiguration: the server parses,
 * defaults and validates it. `dmem.client` holds what only this extension reads (how to
 * start the server, forwarding); the server ignores it.
 */
import * as path from 'node:path';
import * as os from 'node:os';
import * as vscode from 'vscode';

export const SECTION = 'dmem';

/** Read when the model loads (the server's ENGINE_KEYS), or how the server starts: a change restarts it. */
const RESTART_KEYS = ['model', 'adapter', 'device', 'quantization', 'threads', 'client.serverPath', 'client.serverArgs'];

export interface ClientSettings {
  serverPath: string;
  serverArgs: string[];
  forwardDiagnostics: boolean;
}

/** The settings the server gets: a plain JSON copy of the whole section. */
export function serverSettings(): { dmem: unknown } {
  const section = vscode.workspace.getConfiguration().get(SECTION) ?? {};
  return { dmem: JSON.parse(JSON.stringify(section)) };
}

export function clientSettings(): ClientSettings {
  const config = vscode.workspace.getConfiguration(`${SECTION}.client`);
  return {
    serverPath: config.get<string>('serverPath') || 'dmem-lsp',
    serverArgs: config.get<string[]>('serverArgs') ?? [],
    forwardDiagnostics: config.get<boolean>('forwardDiagnostics') ?? false,
  };
}

/** The executable for `serverPath`: `~` expanded, a relative path taken from the first workspace folder. */
export function serverCommand(serverPath: string): string {
  if (serverPath === '~' || serverPath.startsWith('~/')) {
    return path.join(os.homedir(), serverPath.slice(1));
  }
  const folder = vscode.workspace.workspaceFolders?.[0];
  if (!path.isAbsolute(serverPath) && serverPath.includes('/') && folder?.uri.scheme === 'file') {
    return path.resolve(folder.uri.fsPath, serverPath);
  }
  return serverPath;
}

export function needsRestart(event: vscode.ConfigurationChangeEvent): boolean {
  return RESTART_KEYS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`));
}
