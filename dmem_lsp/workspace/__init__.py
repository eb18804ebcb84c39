"""The workspace wing: what each folder's memory holds and how it is written, on disk and online.

Sources become texts (``texts``), the write policy and the secret scan (``policy``,
``secret_scan``, ``secret_rules``) decide what may be written; ``store`` owns a folder's memory
files (``state_file``: the checked safetensors format, ``manifest``, ``files``: atomic private
writes) and ``snapshots`` one store's export; ``config`` reads ``.dmem/config.toml``.
"""
