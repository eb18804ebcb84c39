"""``python -m dmem_lsp`` is the ``dmem-lsp`` command."""

from dmem_lsp.cli.main import main

raise SystemExit(main())
