#!/usr/bin/env bash
# Agentic mode on RouterBench, GPU part (issue 16): for seeds 0,1,2 in parallel: pairs --agentic (80/20 split by
# prompt, 20% of the training side kept out as validation), QLoRA DPO of SmolLM2-135M (same recipe as the quality
# check: packed, precomputed reference, 16 pairs a step, lr 2e-4), then eval --agentic with the adapter (score mode
# over the agentic state prompts and the one-shot prompt). Also the training memory at the p95 agentic state length
# on the Qwen2.5-1.5B architecture. Run from the repository root on the device machine (after boot1/boot2):
#     RB=path/to/routerbench_csvs bash bench/agentic_gpu.sh
# Results go to $OUT/agentic_gpu.tgz (reports, scores, logs) and $OUT/log.
set -uo pipefail
OUT=${OUT:-bench_out}; mkdir -p "$OUT"; W=/tmp/agentic_gpu; rm -rf $W; mkdir -p $W
PY=${PY:-python3}
MODELS=mistralai/mistral-7b-chat,mistralai/mixtral-8x7b-chat,zero-one-ai/Yi-34B-Chat,gpt-3.5-turbo-1106,claude-instant-v1,gpt-4-1106-preview
$PY -m xrouter_lite.cli import routerbench $RB/arc_challenge_train.csv $RB/mbpp_train.csv $RB/winograde_train.csv \
  --out $W/cache.jsonl --pool configs/pool_routerbench.yaml --overwrite > $W/import.log 2>&1 || { cat $W/import.log; exit 1; }
for s in 0 1 2; do
  (
    set -e
    $PY -m xrouter_lite.cli pairs $W/cache.jsonl --pool configs/pool_routerbench.yaml -o $W/s$s --agentic --full-pool \
      --max-pairs-per-prompt 1 --lambda 0 --eval-fraction 0.2 --seed $s --val-fraction 0.2 --tokenizer none \
      --agentic-models $MODELS --agentic-lambda ${LAM:-0.1} --max-pairs-per-state 1 --max-agentic-pairs ${MAXA:-2200}
    timeout -s INT ${TRAIN_S:-100000} $PY -m xrouter_lite.cli train $W/s$s/dpo_train_data.json --model ${XROUTER_LITE_MODELS:-models}/SmolLM2-135M-Instruct -o $W/s$s/adapter \
      --epochs 1 --max-steps ${STEPS:-180} --set load_in_4bit=true --set recipe=packed --set precompute_ref_log_probs=true \
      --set per_device_train_batch_size=${BS:-16} --set gradient_accumulation_steps=${GA:-1} --set gradient_checkpointing=false \
      --set learning_rate=2.0e-4 --set logging_steps=20 --set save_steps=100000 --set report_to=[] --set seed=42 \
      || echo "train exit $? (130: stopped by the time guard TRAIN_S, adapter saved)"
    [ -f $W/s$s/adapter/adapter_config.json ] || { echo "no adapter saved"; exit 1; }
    timeout ${EVAL_S:-240} $PY -m xrouter_lite.cli eval --agentic --adapter $W/s$s/adapter --train-cache $W/cache.jsonl \
      --test-cache $W/s$s/test_cache.jsonl --pool configs/pool_routerbench.yaml -o $W/s$s/eval --seed $s \
      --agentic-models $MODELS --batch-size 16 --bootstrap 1000 --taus ${TAUS:-0,1,2,3,5,7,10,20,50,100}
  ) > $W/log$s.txt 2>&1 &
done
if [ -n "${MEM_LENGTHS:-}" ]; then
  OUT=$W $PY bench/train_memory.py --lengths $MEM_LENGTHS --variants ours --ours-batches 1,2,4,8 --no-loss-check \
    --ab-reps 0 --budget-s 150 > $W/memory.log 2>&1 &
fi
wait
for s in 0 1 2; do echo "== split $s"; tail -n 25 $W/log$s.txt; done
tail -n 30 $W/memory.log 2>/dev/null
cd $W && tar czf "$OUT/agentic_gpu.tgz" --exclude='*.safetensors' --exclude='dpo_*' --exclude='cache.jsonl' \
  --exclude='test_cache.jsonl' --exclude='checkpoint-*' --exclude='*.pt' .
