#!/usr/bin/env bash
# Issue 14's GPU part: train the quality recipe (configs/quality_routerbench.yaml) on three seeded splits of the
# RouterBench training files AT ONCE (one process per split on one GPU), and score, with each adapter, its split's
# held-out questions AND the validation part of its training side (decisions.jsonl with every candidate's score).
# Everything else (the decision head, kNN, the comparison) runs on a CPU from these files: bench/router_quality.py.
#
#   bash bench/router_quality_gpu.sh OUT_DIR [SEEDS]        # SEEDS default "0 1 2"
#
# Per split s: pairs --eval-fraction 0.2 --val-fraction 0.25 --seed s (1,323 training / 441 validation / 441
# held-out questions), QLoRA DPO of SmolLM2-135M-Instruct (train_cuda of the config, batch 8 x 2 accumulation = the
# same 16 pairs a step, so that three runs fit one 80 GB GPU), then `eval` on the held-out and on the validation
# questions, then `fit-head` on the validation scores and `eval` again with the head (the same rule serving uses).
# TRAIN_S (default 400) stops a training run that is still going after that many seconds (Ctrl-C semantics: the
# adapter is saved; the run card says "interrupted").
set -u -o pipefail
OUT=${1:?usage: router_quality_gpu.sh OUT_DIR [SEEDS]}
SEEDS=${2:-"0 1 2"}
TRAIN_S=${TRAIN_S:-400}
RB=${RB:-../shared/data/routerbench}
PY=${PY:-python3}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct}
# SMOKE=1: a CPU check of this script (8 questions per file, one training step, 3 held-out questions per evaluation)
if [ "${SMOKE:-0}" = 1 ]; then LIMIT="--limit-per-file 8"; XTRAIN="--max-steps 1 --set per_device_train_batch_size=1 --set gradient_accumulation_steps=1 --set precompute_ref_log_probs=false"; XEVAL="--max-queries 3"; else LIMIT=""; XTRAIN=""; XEVAL=""; fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

$PY -m xrouter_lite.cli import routerbench "$RB"/arc_challenge_train.csv "$RB"/mbpp_train.csv "$RB"/winograde_train.csv \
  --out "$OUT/cache.jsonl" --overwrite $LIMIT > "$OUT/import.log" 2>&1 || { cat "$OUT/import.log"; exit 1; }
$PY - "$OUT" "$MODEL" <<'EOF'
import sys, yaml
out, model = sys.argv[1], sys.argv[2]
t = yaml.safe_load(open("configs/quality_routerbench.yaml"))["train_cuda"]
t.update(model_name_or_path=model, per_device_train_batch_size=8, gradient_accumulation_steps=2, report_to=[])
yaml.safe_dump(t, open(f"{out}/train_cuda.yaml", "w"))
EOF

one() {
  local s=$1 d="$OUT/s$1"
  mkdir -p "$d"
  $PY -m xrouter_lite.cli pairs "$OUT/cache.jsonl" --pool configs/pool_routerbench.yaml --out-dir "$d" --strategy all \
    --max-pairs-per-prompt 6 --full-pool --eval-fraction 0.2 --val-fraction 0.25 --seed "$s" --lambda 0 \
    --cost-max 0.5 --cost-unit normalized --tokenizer none > "$d/pairs.log" 2>&1 || return 1
  # the training side (train + validation questions): the cost vector of tau
  $PY - "$OUT/cache.jsonl" "$d" <<'EOF'
import json, sys
cache, d = sys.argv[1], sys.argv[2]
test = {json.loads(l)["prompt_id"] for l in open(f"{d}/test_cache.jsonl")}
with open(f"{d}/trainside_cache.jsonl", "w") as f:
    for l in open(cache):
        if json.loads(l)["prompt_id"] not in test:
            f.write(l)
EOF
  timeout -s INT "$TRAIN_S" $PY -m xrouter_lite.cli train "$d/dpo_train_data.json" --config "$OUT/train_cuda.yaml" \
    -o "$d/router" $XTRAIN > "$d/train.log" 2>&1
  echo "split $s: training exit $? at $(date +%T)"
  $PY -m xrouter_lite.cli eval --adapter "$d/router" --test-cache "$d/test_cache.jsonl" --train-cache "$d/trainside_cache.jsonl" \
    --out "$d/eval_test" --baselines single,random,oracle,best_single $XEVAL > "$d/eval_test.log" 2>&1
  echo "split $s: eval test exit $? at $(date +%T)"
  $PY -m xrouter_lite.cli eval --adapter "$d/router" --test-cache "$d/val_cache.jsonl" --train-cache "$d/trainside_cache.jsonl" \
    --out "$d/eval_val" --baselines single --no-plot > "$d/eval_val.log" 2>&1
  echo "split $s: eval val exit $? at $(date +%T)"
  $PY -m xrouter_lite.cli fit-head --adapter "$d/router" --val-cache "$d/val_cache.jsonl" \
    --decisions "$d/eval_val/decisions.jsonl" > "$d/fit_head.log" 2>&1 \
  && $PY -m xrouter_lite.cli eval --adapter "$d/router" --test-cache "$d/test_cache.jsonl" \
    --train-cache "$d/trainside_cache.jsonl" --out "$d/eval_test_head" --baselines single,best_single $XEVAL > "$d/eval_test_head.log" 2>&1
  echo "split $s: fit-head + eval with head exit $? at $(date +%T)"
}

for s in $SEEDS; do one "$s" & done
wait
echo "all done at $(date +%T)"
