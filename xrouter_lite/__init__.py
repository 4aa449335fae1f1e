"""xrouter-lite: a cost-aware LLM router trained offline with DPO, small enough for one 8 GB laptop GPU.

Python API::

    from xrouter_lite import Router, Controller
    router = Router.load("knn", train_cache="runs/example/offline_cache.jsonl", pool="configs/pool_routerbench.yaml")
    router.route([{"role": "user", "content": "2+2?"}], tau=0.5)     # Decision: model_id, scores, costs
    client = Controller(router=router)                                 # routes, then calls the model (litellm)
    client.chat.completions.create(model="router-0.5", messages=[...])
"""

__version__ = "0.1.0"

from .routing import Decision, Router, RouterSpec, load_router  # noqa: E402  (light: pydantic + yaml)

__all__ = ["Controller", "Decision", "Router", "RouterSpec", "load_router", "__version__"]


def __getattr__(name: str):
    if name == "Controller":  # imports litellm only when used
        from .controller import Controller

        return Controller
    raise AttributeError(f"module 'xrouter_lite' has no attribute {name!r}")
