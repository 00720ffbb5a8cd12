"""The command-line tools: ``garage`` and ``garage-peer`` (thin, one module per group)."""
