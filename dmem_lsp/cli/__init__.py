"""The command line: ``main`` (serve, and the dispatch), ``adapter``, ``memory``, ``doctor``, ``demo``, episodes."""
