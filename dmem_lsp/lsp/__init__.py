"""The LSP wing: the server object, one handler per LSP area, the protocol and reading the byte stream.

It imports the runtime and workspace wings; neither of them imports it.
"""
