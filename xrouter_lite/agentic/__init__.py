"""Agentic mode (issue 16): the router may call several models (two at once), read their answers, then call again
or select one. States and actions are rendered by ``prompting.build_agentic_prompt`` (one format for training,
evaluation and serving).

- ``state``: questions from the cache, legal actions, agreement signatures, ``AgenticConfig``;
- ``values``: exact values by search over continuations (hindsight per question; information states per task);
- ``pairs``: ``xrouter-lite pairs --agentic``; ``replay``/``evaluate``: ``xrouter-lite eval --agentic``;
- ``baselines``: hand-set cascades, per-task rule, oracle; ``policy``: the scoring rule (logp - tau x cost);
- ``runner``: the live async runner used by the server (``model="router-agentic"``)."""
