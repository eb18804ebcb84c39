"""``python -m dmem_lsp`` is the ``dmem-lsp`` command."""

from .cli import main

raise SystemExit(main())
