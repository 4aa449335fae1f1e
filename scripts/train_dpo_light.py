"""Train the router's LoRA adapter with QLoRA DPO: the script form of `xrouter-lite train`, for `accelerate launch`.

    python scripts/train_dpo_light.py --config configs/train_qwen_4060.yaml --data_path outputs/pairs/dpo_train_data.json
    python scripts/train_dpo_light.py --config configs/train_smollm2_cpu.yaml --max_steps 20
    python scripts/train_dpo_light.py --config ... --resume
    accelerate launch --num_processes 2 scripts/train_dpo_light.py --config ...   # see docs/MULTI_GPU.md

Every field of ``xrouter_lite.train.TrainConfig`` is a flag (``--lora_r 32`` or ``--lora-r 32``; values are read as
YAML, so ``--report_to '[]'`` and ``--lora_target_modules '[q_proj, v_proj]'`` work). Precedence: defaults < the
YAML file < flags. Exit codes: 0 done (also after a Ctrl-C that saved a checkpoint), 2 bad input, 130 aborted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from xrouter_lite.train import (  # noqa: E402
    ModelTooLargeError,
    TrainConfig,
    TrainConfigError,
    TrainDataError,
    parse_overrides,
    train,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", "-c", type=Path, help="YAML training config")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    group = ap.add_argument_group("settings (TrainConfig fields)")
    for name, info in TrainConfig.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default
        text = (info.description + "; " if info.description else "") + f"default: {default!r}"
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, metavar="VALUE", default=None, help=text)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = [f"{k}={v}" for k, v in vars(args).items() if k in TrainConfig.model_fields and v is not None]
    try:
        cfg = TrainConfig.load(args.config, parse_overrides(given))
        result = train(cfg, resume=args.resume)
    except (TrainConfigError, TrainDataError, ModelTooLargeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    print(f"{result.run_card['status']}: adapter and run card in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
