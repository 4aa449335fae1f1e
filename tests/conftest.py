import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    p = SHARED / "data"
    if not p.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return p


@pytest.fixture(scope="session")
def pool18():
    from xrouter_lite.pool import load_pool

    return load_pool(REPO / "configs" / "pool.yaml")


@pytest.fixture(scope="session")
def pool_rb():
    from xrouter_lite.pool import load_pool

    return load_pool(REPO / "configs" / "pool_routerbench.yaml")


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from xrouter_lite.assets import smollm2_path

    return AutoTokenizer.from_pretrained(str(smollm2_path()))
