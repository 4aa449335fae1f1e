"""Lets the unchanged QLoRA DPO trainer (``xrouter_lite.train``) read agentic rows: its three prompt/action
functions are pointed at their ``prompting`` twins that also read agentic action keys. For a one-shot row the twins
return exactly what the originals return (same text, same token ids), so the recipe is unchanged.
(At merge this is better done in train.py itself: import ``any_action_text``/``encode_any_action``/
``prompt_from_any_example`` there.)"""

from __future__ import annotations


def patch_train() -> None:
    from .. import prompting, train

    train.action_text = prompting.any_action_text
    train.encode_action = prompting.encode_any_action
    train.prompt_from_example = prompting.prompt_from_any_example
