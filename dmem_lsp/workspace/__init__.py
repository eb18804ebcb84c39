"""The workspace wing: what each folder's memory holds and how it is written, on disk and online.

Sources become texts (``texts``), the write policy and the secret scan decide what may be
written, ``store`` and ``snapshots`` own the files, ``config`` reads ``.dmem/config.toml``.
"""
