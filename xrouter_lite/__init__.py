"""xrouter-lite: a cost-aware LLM router trained offline with DPO, small enough for one 8 GB laptop GPU."""

__version__ = "0.1.0"
