"""An OpenAI-compatible routing server: ``POST /v1/chat/completions`` with ``model="router"``.

    xrouter-lite serve --adapter runs/router --pool configs/pool.yaml --port 8800

In code: ``create_app(pool=..., router=..., settings=ServeSettings(...))`` returns the FastAPI app;
``run_server(settings)`` runs it. The manual (model names, metadata, streaming, budgets, errors, tools, the
decision log, the request fields passed on or refused) is docs/SERVING.md.

The package: ``settings`` (ServeSettings), ``protocol`` (the OpenAI request and error), ``upstream`` (calls through
``llm``'s public functions, streams, the key scrubber), ``budget`` (estimate and ledger), ``batcher`` (micro-batched
decisions), ``decision_log`` (the opt-in JSONL log), ``app`` (plan -> execute with fallback; the app; the router;
running it).
"""

from .app import Plan, RouterServer, bind_socket, create_app, load_router, run_server
from .batcher import DecisionBatcher, QueueFullError
from .budget import BudgetLedger, estimate_cost, estimate_costs, estimate_prompt_tokens
from .decision_log import DecisionLog
from .protocol import PASS_FIELDS, ROUTER_MODEL, SERVER_FIELDS, ApiError, ChatMessage, ChatRequest
from .settings import ServeSettings, validation_text
from .upstream import CallRecord, DirectStream, LiteLLMStream, Scrubber, UpstreamStream

__all__ = [
    "ApiError", "BudgetLedger", "CallRecord", "ChatMessage", "ChatRequest", "DecisionBatcher", "DecisionLog",
    "DirectStream", "LiteLLMStream", "PASS_FIELDS", "Plan", "QueueFullError", "ROUTER_MODEL", "RouterServer",
    "SERVER_FIELDS", "Scrubber", "ServeSettings", "UpstreamStream", "bind_socket", "create_app", "estimate_cost",
    "estimate_costs", "estimate_prompt_tokens", "load_router", "run_server", "validation_text",
]

_validation_text = validation_text  # the name serve.py had (callers written against it keep working)
