"""The runtime wing: the engine (loading and generating) and its backbone (the model and
tokenizer on a device), adapters and fingerprints, the worker, prompts, settings, and what a
completion or an explanation is in terms of text.

Importing it loads nothing heavy: torch and transformers are imported by the engine, lazily.
"""
