"""Issue 16, ninth session: a margin on the logistic-valued table's pair calls (a pair is called only if its value
beats every single call by more than d), judged on the validation parts of the training sides only (``val``) or
replayed on the held-out questions (``test``). The table's default setting (separate, C_cond 1, min_rows 30).

    python bench/agentic_pair_margin.py val 0,0.005,0.01,0.02,0.04 [--cache CACHE --emb-cache EMB.npz]
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / "bench"))
import agentic_logistic as AL
from xrouter_lite.agentic import logistic_table as LT
from xrouter_lite.agentic.logistic_table import call_key
MARGIN = {'d': 0.0}
orig = LT.LogisticTable.root_values
def root_values(self, p, tau):
    q = orig(self, p, tau)
    for a, b in self.pairs:
        q[call_key([a, b])] -= MARGIN['d']
    return q
LT.LogisticTable.root_values = root_values
mode = sys.argv[1]
margins = [float(x) for x in sys.argv[2].split(',')]
CACHE = Path(sys.argv[sys.argv.index("--cache") + 1]) if "--cache" in sys.argv else Path('/tmp/s2/rb.jsonl')
EMB = Path(sys.argv[sys.argv.index("--emb-cache") + 1]) if "--emb-cache" in sys.argv else Path('/tmp/s2/emb_full.npz')
from agentic_quality import MODELS, _embeddings
from xrouter_lite.agentic.state import AgenticConfig, load_questions
from xrouter_lite.pool import load_pool
from xrouter_lite.pairs import split_prompt_ids
from xrouter_lite.agentic.evaluate import evaluate_agentic, logistic_table_curves
pool = load_pool(REPO / 'configs' / 'pool_routerbench.yaml')
qs = load_questions(CACHE, pool, MODELS)
cfg = AgenticConfig()
emb = _embeddings(qs, EMB)
kw0 = dict(mode="separate", C_cond=1.0, min_rows=30)
for seed in [0, 1, 2]:
    ev = split_prompt_ids([q.prompt_id for q in qs], 0.2, seed)
    train = [q for q in qs if q.prompt_id not in ev]
    test = [q for q in qs if q.prompt_id in ev]
    if mode == 'val':
        AL.GRID = [kw0]
        for d in margins:
            MARGIN['d'] = d
            print(f"margin {d}", flush=True)
            AL.choose(train, emb, pool, MODELS, cfg, seed)
    else:
        for d in margins:
            MARGIN['d'] = d
            rep = evaluate_agentic(train, test, pool, MODELS, cfg, bootstrap=300, seed=seed, log=lambda m: None,
                                   emb=emb, extra_curves=logistic_table_curves(emb, pool, MODELS, cfg, **kw0), main="logistic_table")
            print(f"seed {seed} margin {d}: table {rep['curves']['logistic_table']['aiq']:.4f} oneshot {rep['curves']['logistic_oneshot']['aiq']:.4f} diff {rep['aiq_vs']['logistic_oneshot']['diff']:+.4f} {rep['aiq_vs']['logistic_oneshot']['ci95']}", flush=True)
