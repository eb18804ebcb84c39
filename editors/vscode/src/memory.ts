/**
 * `dmem.memoryStatus` as a markdown page: per workspace folder, where its memory is kept,
 * the tokens written into each store, the last writes and what was refused.
 */
import * as vscode from 'vscode';
import type { MemoryStatus } from './session';

type Entry = Record<string, unknown>;

export function memoryMarkdown({ folders }: MemoryStatus): string {
  if (folders.length === 0) {
    return '# dmem memory\n\nNo workspace folder has a memory yet (open a folder; the model must be loaded).\n';
  }
  const pages = folders.map((f) => {
    const lines = [
      `## ${vscode.Uri.parse(f.folder).fsPath}`,
      '',
      `Kept in \`${f.directory}\` (${(f.fileBytes / 1024).toFixed(1)} KiB)${f.readOnly ? ', **read-only**: another dmem-lsp holds it' : ''}.`,
      '',
      ...(f.adapter ? [`Adapter: \`${f.adapter}\`${f.config ? ` (from \`${f.config}\`)` : ''}.`, ''] : []),
      '| store | tokens | state sha256 |',
      '|---|---:|---|',
      ...Object.entries(f.stores).map(([store, s]) => `| ${store} | ${s.tokens} | \`${s.sha256.slice(0, 12)}\` |`),
    ];
    const writes = Object.values(f.stores).flatMap((s) => s.lastWrites);
    writes.sort((a, b) => String(a.time).localeCompare(String(b.time)));
    if (writes.length > 0) {
      lines.push('', '### Last writes', '', ...writes.map(describe));
    }
    if (f.skipped.length > 0) {
      lines.push('', '### Refused', '', ...f.skipped.map((e) => `- ${e.time}: ${e.source} (${e.kind}): ${e.skipped}`));
    }
    return lines.join('\n');
  });
  return `# dmem memory\n\n${pages.join('\n\n')}\n`;
}

function describe(e: Entry): string {
  const tokens = e.tokens === undefined ? '' : `, ${e.tokens} tokens`;
  return `- ${e.time}: ${e.store} ← ${e.source} (${e.kind}${tokens})`;
}
