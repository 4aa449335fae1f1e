"""Training speed and memory of the built-in example's CPU recipe, one variant per process.

    python bench/example_cpu.py RUN_DIR/dpo_train_data.json --steps 3 \
        --variant "" --variant "lora_top_layers=4 gradient_checkpointing=false" \
        --variant "lora_top_layers=4 gradient_checkpointing=false share_scope=prompt per_device_train_batch_size=8"

Each variant is the `train:` section of configs/example_routerbench.yaml (``--config``) plus ``KEY=VALUE`` overrides
(TrainConfig fields, values read as YAML), trained for ``--steps`` steps in a fresh process (so the peak RSS is that
variant's own). Prints one JSON line per variant: wall time of the steps (TRL's train_runtime), seconds per pair,
the last logged loss, and the process's peak RSS. The pairs file comes from the pipeline's pairs stage
(``xrouter-lite run`` writes it to ``out_dir``). Wall times on a shared machine are ratios at best: report the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, shutil, yaml
from xrouter_lite.train import TrainConfig, train
cfg_file, data, out, steps, over = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
t = dict(yaml.safe_load(open(cfg_file))["train"])
t.update(data_path=data, output_dir=out, report_to=[], disable_tqdm=True, save_steps=10**6, max_steps=steps)
t.update(over)
shutil.rmtree(out, ignore_errors=True)
r = train(TrainConfig(**t), say=lambda *a: None)
m = r.run_card["final_metrics"]
bs = t.get("per_device_train_batch_size", 1) * t.get("gradient_accumulation_steps", 1)
rt = float(m.get("train/train_runtime", "nan"))
print("RESULT " + json.dumps({"variant": over, "steps": m["global_step"], "pairs": m["global_step"] * bs,
      "train_runtime_s": round(rt, 1), "s_per_pair": round(rt / max(1, m["global_step"] * bs), 2),
      "loss": m.get("loss"), "peak_rss_gib": r.run_card["peak_memory"].get("cpu_max_rss_gib")}))
"""


def parse_variant(text: str) -> dict:
    import yaml

    out = {}
    for item in text.split():
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="dpo_train_data.json of the example (the pipeline's pairs stage)")
    ap.add_argument("--config", default="configs/example_routerbench.yaml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--variant", action="append", default=None, help='"KEY=VALUE ..." (repeatable; "" = the config)')
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    for v in args.variant or [""]:
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, "-c", CHILD, args.config, args.data, os.path.join(tmp, "out"),
                                str(args.steps), json.dumps(parse_variant(v))], env=env, capture_output=True, text=True)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            print(json.dumps({"variant": v, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}))
            continue
        print(lines[-1][len("RESULT "):], flush=True)


if __name__ == "__main__":
    main()
