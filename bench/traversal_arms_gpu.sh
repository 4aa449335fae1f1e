#!/usr/bin/env bash
# Issue 15, quality half: the same recipe trained on the FULL cache and on the COST-ORDERED cache (--explore 0.08) of
# each seeded split, same number of steps, evaluated on the split's 441 held-out questions (full rows). Two phases, so
# the CPU part can run in one device call and the GPU part in the next (the warm machine keeps /tmp):
#   PHASE=prep  RB=dir/with/routerbench_csvs bash bench/traversal_arms_gpu.sh   # import, cost-ordered caches, pairs
#   PHASE=train bash bench/traversal_arms_gpu.sh                                 # 6 trainings at once, then 6 evals
# (TRAIN_S=seconds stops the trainings with a checkpoint, EVAL=0 skips the evaluations; the next PHASE=train resumes;
#  SAVE_AT=N stops each training at its checkpoint of step N and evaluates that; ARMS="full1 co1" / PREP_ARMS="full")
# Recipe: configs/quality_routerbench.yaml's pairs (strategy all, 6 pairs a question, the whole pool offered) with
# lambda LAM (default 0.1: under lambda > 0 a cheaper correct answer is preferred to every skipped dearer model, so a
# partial row still gives pairs) and its train_cuda settings (SmolLM2-135M 4-bit + LoRA r=16, DPO, lr 2e-4) for
# STEPS steps of BS x GA pairs (default 120 x 4 x 4), reference log-probs on the fly. Results: $OUT/arms.tgz.
set -uo pipefail
W=${W:-/tmp/tarms}; PY=${PY:-python3}; OUT=${OUT:-bench_out}; mkdir -p "$OUT" "$W"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
POOL=configs/pool_routerbench.yaml
SEEDS=${SEEDS:-0 1 2}
if [ "${PHASE:?PHASE=prep or train}" = prep ]; then
  $PY -m xrouter_lite.cli import routerbench $RB/arc_challenge_train.csv $RB/mbpp_train.csv $RB/winograde_train.csv \
    --out $W/full.jsonl --pool $POOL --overwrite > $W/import.log 2>&1 || { cat $W/import.log; exit 1; }
  $PY bench/traversal_savings.py $W/full.jsonl --explore 0.08 --seeds $SEEDS --out-dir $W > $W/savings.log 2>&1 || { cat $W/savings.log; exit 1; }
  cat $W/savings.log
  $PY - <<'PYEOF'
import os, yaml
c = yaml.safe_load(open("configs/quality_routerbench.yaml"))
p = dict(c["pairs"]); p["reward"] = dict(p["reward"], lam=float(os.environ.get("LAM", "0.1")))
yaml.safe_dump(p, open(os.environ.get("W", "/tmp/tarms") + "/pairs.yaml", "w"))
PYEOF
  for s in $SEEDS; do
    for arm in ${PREP_ARMS:-full co}; do
      src=$W/full.jsonl; [ $arm = co ] && src=$W/split$s/cost_ordered.jsonl
      $PY -m xrouter_lite.cli pairs $src --pool $POOL --config $W/pairs.yaml --seed $s --out-dir $W/$arm$s \
        --tokenizer smollm2 > $W/pairs_$arm$s.log 2>&1 &
    done
  done
  wait
  for s in $SEEDS; do for arm in ${PREP_ARMS:-full co}; do echo "$arm$s: $(tail -n 3 $W/pairs_$arm$s.log | tr '\n' ' ')"; done; done
  exit 0
fi
M=${XROUTER_LITE_MODELS:-models}/SmolLM2-135M-Instruct
arm() {
  local d=$W/$1 res=""
  ls -d $d/router/checkpoint-* > /dev/null 2>&1 && res=--resume  # a run stopped by TRAIN_S in an earlier call
  if ! grep -q '"status": "completed"' $d/router/run_card.json 2>/dev/null; then
  timeout -s INT ${TRAIN_S:-100000} $PY -m xrouter_lite.cli train $d/dpo_train_data.json --model $M -o $d/router $res \
    --epochs 1 --max-steps ${STEPS:-120} --set load_in_4bit=true --set recipe=packed --set precompute_ref_log_probs=false \
    --set per_device_train_batch_size=${BS:-4} --set gradient_accumulation_steps=${GA:-4} --set gradient_checkpointing=false \
    --set learning_rate=2.0e-4 --set logging_steps=20 --set save_steps=${SAVE_AT:-100000} --set report_to=[] --set seed=42 \
    >> $d/train.log 2>&1 &
  local tp=$!
  if [ -n "${SAVE_AT:-}" ]; then  # stop once the checkpoint of step SAVE_AT is written; evaluate that checkpoint
    while kill -0 $tp 2>/dev/null && [ ! -f $d/router/checkpoint-$SAVE_AT/adapter_model.safetensors ]; do sleep 2; done
    sleep 5; kill -INT $tp 2>/dev/null; sleep 1; kill -INT $tp 2>/dev/null
  fi
  wait $tp || echo "$1: train exit $? (130/124: stopped: checkpoint saved, run again to resume)"
  fi
  local ad=$d/router; [ -n "${SAVE_AT:-}" ] && ad=$d/router/checkpoint-$SAVE_AT
  [ -f $ad/adapter_config.json ] || { echo "$1: no adapter"; return 1; }
  [ "${EVAL:-1}" = 1 ] || return 0
  local src=$W/full.jsonl; [ ${1:0:2} = co ] && src=$W/split${1: -1}/cost_ordered.jsonl
  timeout ${EVAL_S:-300} $PY -m xrouter_lite.cli eval --adapter $ad --base-model $M --quantize 4bit --test-cache $d/test_cache.jsonl --train-cache $src \
    --pool $POOL --out $d/eval --mode score --baselines single,oracle --taus 0,0.05,0.1,0.2,0.3,0.5,1,2,3,5,10,20,100 --batch-size 16 --no-plot \
    > $d/eval.log 2>&1 || echo "$1: eval exit $?"
  echo "$1 done"
}
( while sleep 30; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done ) > $W/smi.log 2>&1 & MON=$!
PIDS=()
for a in ${ARMS:-$(for s in $SEEDS; do echo full$s co$s; done)}; do arm $a & PIDS+=($!); done
for p in "${PIDS[@]}"; do wait $p; done
kill $MON 2>/dev/null
cd $W && tar czf "$OUT/arms.tgz" savings.log smi.log */pairs_report.json */train.log */router/run_card.json */eval/report.json \
  */eval/decisions*.jsonl* pairs_*.log 2>/dev/null
ls -la "$OUT"
