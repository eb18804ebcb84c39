"""dmem-lsp: the language server, the engine that runs the model, workspace memory, CLI.

Importing this package must stay cheap: torch and transformers load in the background
after the server has answered ``initialize``.
"""

__version__ = "0.1.0"
