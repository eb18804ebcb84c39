/**
 * Read-only markdown documents (scheme `dmem:`) for explanations and the memory status:
 * shown as a markdown preview beside the editor, or as text where there is no preview.
 * Being virtual, they are never synced to the server and never ask to be saved.
 */
import * as vscode from 'vscode';

export class MarkdownDocuments implements vscode.TextDocumentContentProvider {
  static readonly scheme = 'dmem';
  private readonly texts = new Map<string, string>();
  private count = 0;

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.texts.get(uri.path) ?? '';
  }

  async show(title: string, markdown: string): Promise<vscode.Uri> {
    const uri = vscode.Uri.from({ scheme: MarkdownDocuments.scheme, path: `/${title} ${++this.count}.md` });
    this.texts.set(uri.path, markdown);
    try {
      await vscode.commands.executeCommand('markdown.showPreviewToSide', uri);
    } catch {
      const document = await vscode.workspace.openTextDocument(uri);
      await vscode.window.showTextDocument(document, { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true });
    }
    return uri;
  }
}
