"""Agentic mode (issue 16): the router may call several models (two at once), read their answers, then call again
or select one. States and actions are rendered by ``prompting.build_agentic_prompt`` (one format for training,
evaluation and serving).

- ``state``: questions from the cache, legal actions, agreement signatures, ``AgenticConfig``;
- ``values``: exact values by search over continuations (hindsight per question; information states per task);
- ``pairs``: ``xrouter-lite pairs --agentic``; ``replay``/``evaluate``: ``xrouter-lite eval --agentic``;
- ``baselines``: hand-set cascades, per-task rule, oracle; ``policy``: the scoring rule (logp - tau x cost);
- ``table`` / ``logistic_table``: the policies that serve without a trained LLM (values per k-means cluster; values
  from per-question logistic regressions on the embedding, whose root is the one-shot logistic router);
- ``runner``: the live async runner used by the server (``model="router-agentic"``)."""
