/**
 * `dmem-lsp doctor`, run with the server command and the model settings the server gets,
 * its report written to the output channel: versions, CUDA, where the model and adapter
 * load from, and hints. What a user needs when the model does not load.
 */
import { execFile } from 'node:child_process';
import * as vscode from 'vscode';
import { clientSettings, SECTION, serverCommand } from './settings';

const TIMEOUT_MS = 120_000;

export function runDoctor(output: vscode.OutputChannel): Promise<void> {
  const { serverPath, serverArgs } = clientSettings();
  const args = [...serverArgs, ...settingFlags(serverArgs), 'doctor'];
  output.appendLine(`\n$ ${[serverPath, ...args].join(' ')}`);
  output.show(true);
  return new Promise((resolve) => {
    execFile(serverCommand(serverPath), args, { timeout: TIMEOUT_MS, maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      output.append(stdout);
      output.append(stderr);
      // exit code 1 with a report: the server would not start, and the report says why
      if (error && !(error.code === 1 && stdout)) {
        const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
        output.appendLine(
          missing
            ? `${serverPath} was not found: install dmem-lsp (scripts/setup) and set dmem.client.serverPath to its .venv/bin/dmem-lsp`
            : `doctor failed: ${error.message}`,
        );
      }
      resolve();
    });
  });
}

/** --model/--adapter/--device/--quantization/--threads from the settings, unless serverArgs already give them. */
function settingFlags(serverArgs: string[]): string[] {
  const config = vscode.workspace.getConfiguration(SECTION);
  return ['model', 'adapter', 'device', 'quantization', 'threads'].flatMap((key) => {
    const value = config.get<string | number>(key);
    return value && value !== 'auto' && !serverArgs.includes(`--${key}`) ? [`--${key}`, String(value)] : [];
  });
}
