#!/usr/bin/env bash
# The GPU half of the cost-ordered cache check (docs/BENCHMARKS.md, "Offline cache at a fraction of the price"):
# for each split seed given, the recipe of configs/quality_routerbench.yaml (pairs: strategy all, lambda 0, 6 pairs a
# question, the whole pool offered; SmolLM2-135M 4-bit + LoRA r=16, DPO, train_cuda's settings) trained on
# runs/traversal/split<seed>/cost_ordered.jsonl (bench/traversal_savings.py), all seeds as parallel processes, then
# evaluated (score mode, the config's taus; baselines single/random/oracle) on that split's held-out questions.
#   bash bench/traversal_gpu.sh OUT_DIR EPOCHS SEED...
# Memory: each training peaks at 31 GiB reserved (batch 16 x ~2,200-token rows): two fit an 80 GB H100, three do not
# (the third ran out of memory on 2026-11-26).
set -euo pipefail
OUT=${1:?out dir}; EPOCHS=${2:?epochs}; shift 2
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
for s in "$@"; do  # the caches travel xz-compressed
  f=runs/traversal/split$s/cost_ordered.jsonl
  [ -f $f ] || $PY -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" $f.xz $f
done
$PY - "$EPOCHS" <<'PYEOF'
import os, sys, yaml
c = yaml.safe_load(open("configs/quality_routerbench.yaml"))
t = dict(c["train_cuda"]); t["num_train_epochs"] = float(sys.argv[1])
if os.environ.get("XROUTER_LITE_MODELS"):  # the device machine's converted copy
    t["model_name_or_path"] = os.path.join(os.environ["XROUTER_LITE_MODELS"], "SmolLM2-135M-Instruct")
yaml.safe_dump(t, open("runs/traversal/train.yaml", "w"))
e = dict(c["eval"]); e["baselines"] = ["single", "random", "oracle"]
yaml.safe_dump(e, open("runs/traversal/eval.yaml", "w"))
p = dict(c["pairs"]); yaml.safe_dump(p, open("runs/traversal/pairs.yaml", "w"))
PYEOF
arm() {
  local s=$1 d=runs/traversal/split$1
  [ -f $d/dpo_train_data.json ] || $PY -m xrouter_lite.cli pairs $d/cost_ordered.jsonl --pool configs/pool_routerbench.yaml --config runs/traversal/pairs.yaml \
      --seed $s --out-dir $d --tokenizer smollm2 > $d/pairs.log 2>&1
  $PY -m xrouter_lite.cli train $d/dpo_train_data.json --config runs/traversal/train.yaml -o $d/router > $d/train.log 2>&1
  $PY -m xrouter_lite.cli eval --config runs/traversal/eval.yaml --adapter $d/router --test-cache $d/test_cache.jsonl \
      --train-cache $d/cost_ordered.jsonl --pool configs/pool_routerbench.yaml --out $d/eval > $d/eval.log 2>&1
  echo "split $s done"
}
PIDS=()
for s in "$@"; do arm $s & PIDS+=($!); done
( while sleep 20; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done ) & MON=$!
for p in "${PIDS[@]}"; do wait $p || echo "an arm failed (see its logs)"; done
kill $MON 2>/dev/null || true
tar czf $OUT/results.tgz runs/traversal/split*/{*.log,pairs_report.json,router/run_card.json,eval/report.json,eval/report.md,eval/decisions*.jsonl*} 2>/dev/null || true
