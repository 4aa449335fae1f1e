"""One config loader for every stage (xrouter_lite/config.py): one error type, one line `FILE: key.path: problem`,
unknown keys refused at every depth, broken YAML as one line with exit code 2 and no traceback, and the pipeline
checking every section before any stage starts (issue 11 item 7, issue 12 point 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from xrouter_lite.cli import app
from xrouter_lite.config import ConfigError, load_config, packaged_config, read_yaml_mapping

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _w(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _one_line_error(res, *needles: str) -> str:
    """The command failed with exit 2 and one line `error: ...` holding every needle; no traceback."""
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out and res.exception is None or isinstance(res.exception, SystemExit), out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---- the loader -------------------------------------------------------------------------------------------------


def test_every_stage_error_is_a_config_error_in_one_format(tmp_path):
    from xrouter_lite.cache import CacheConfig, CacheConfigError
    from xrouter_lite.evaluate import EvalConfig
    from xrouter_lite.pairs import PairsConfig
    from xrouter_lite.pipeline import PipelineConfigError
    from xrouter_lite.pool import PoolError
    from xrouter_lite.train import TrainConfig, TrainConfigError

    for cls in (CacheConfigError, PipelineConfigError, PoolError, TrainConfigError):
        assert issubclass(cls, ConfigError)
    cases = [
        (CacheConfig, "concurency: 4\n", "concurency: unknown key (did you mean 'concurrency'?)"),
        (PairsConfig, "reward:\n  lamda: 0.5\n", "reward.lamda: unknown key (did you mean 'lam'?)"),
        (TrainConfig, "lora_r: many\n", "lora_r: Input should be a valid integer"),
        (EvalConfig, "test_cache: t.jsonl\ntaus: [0, x]\n", "taus.1: Input should be a valid number"),
    ]
    for cls, text, want in cases:
        p = _w(tmp_path, text)
        with pytest.raises(ConfigError) as e:
            load_config(cls, p)
        assert str(e.value).startswith(f"{p}: {want}"), str(e.value)
        assert "\n" not in str(e.value)


def test_reward_typo_is_refused_by_every_door(tmp_path):
    from xrouter_lite.pairs import PairsConfig
    from xrouter_lite.reward import RewardConfig

    with pytest.raises(ValueError):
        RewardConfig(lamda=0.5)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"reward\.lamda"):
        PairsConfig.from_yaml(_w(tmp_path, "reward: {lamda: 0.5}\n"))
    with pytest.raises(ConfigError, match=r"pairs\.reward\.lamda"):
        PairsConfig.from_dict({"reward": {"lamda": 0.5}}, where="p.yaml", prefix="pairs")


def test_overrides_win_and_none_is_not_given(tmp_path):
    from xrouter_lite.cache import CacheConfig

    c = load_config(CacheConfig, _w(tmp_path, "concurrency: 8\nbudget_usd: 3\n"), {"concurrency": 2, "budget_usd": None})
    assert c.concurrency == 2 and c.budget_usd == 3
    with pytest.raises(ConfigError, match=r"^command line: concurrency"):
        load_config(CacheConfig, None, {"concurrency": 0})


def test_broken_yaml_duplicate_keys_and_non_mappings_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_yaml_mapping(_w(tmp_path, "a: [1, 2\nb: 3\n"))
    msg = str(e.value)
    assert "\n" not in msg and "not valid YAML" in msg and "line " in msg and str(tmp_path) in msg
    with pytest.raises(ConfigError, match="key 'a' is given twice"):
        read_yaml_mapping(_w(tmp_path, "a: 1\nb: {c: 1}\na: 2\n"))
    with pytest.raises(ConfigError, match="given twice"):
        read_yaml_mapping(_w(tmp_path, "b: {c: 1, c: 2}\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml_mapping(_w(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        read_yaml_mapping(tmp_path / "missing.yaml")
    assert read_yaml_mapping(_w(tmp_path, "")) == {}


# ---- pools ---------------------------------------------------------------------------------------------------------

POOL = """models:
  m1: {litellm_model: openai/m1, input_price: 1.0, output_price: 2.0, context_window: 8192, max_output_tokens: 512}
  m2: {litellm_model: openai/m2, input_price: 3.0, output_price: 4.0, context_window: 8192, max_output_tokens: 512}
"""


def test_pool_duplicate_id_infinite_price_and_typos_are_refused(tmp_path):
    from xrouter_lite.pool import PoolError, load_pool

    assert load_pool(_w(tmp_path, POOL)).ids == ["m1", "m2"]
    dup = POOL + "  m1: {litellm_model: openai/x, input_price: 9, output_price: 9, context_window: 8, max_output_tokens: 8}\n"
    with pytest.raises(PoolError, match="key 'm1' is given twice"):
        load_pool(_w(tmp_path, dup))
    for bad, want in [
        ("input_price: 1.0", "models.m1.input_price: Input should be a finite number"),
        ("output_price: 2.0", "models.m1.output_price: Input should be a finite number"),
    ]:
        text = POOL.replace(bad, bad.split(":")[0] + ": .inf", 1)
        with pytest.raises(PoolError) as e:
            load_pool(_w(tmp_path, text))
        assert want in str(e.value)
    typo = POOL.replace("m4, input_price: 3.0", "").replace("context_window: 8192, max_output_tokens: 512}\n", "contxt_window: 8192, max_output_tokens: 512}\n")
    with pytest.raises(PoolError, match=r"models\.m1\.contxt_window: unknown key \(did you mean 'context_window'\?\)"):
        load_pool(_w(tmp_path, typo))


def test_packaged_configs_are_found_without_a_configs_folder(tmp_path, monkeypatch):
    from xrouter_lite.pool import load_pool

    monkeypatch.chdir(tmp_path)  # no configs/ here
    p = packaged_config("configs/pool_routerbench.yaml")
    assert p.is_file() and p.is_absolute()
    assert len(load_pool("configs/pool_routerbench.yaml")) == 11
    assert packaged_config("elsewhere/pool.yaml") == Path("elsewhere/pool.yaml")


# ---- the command line: exit 2, one line, no traceback ----------------------------------------------------------------


def test_cli_broken_yaml_is_one_line_exit_2_for_every_stage(tmp_path):
    bad = _w(tmp_path, "test_cache: [a, b\nmode: score\n", "bad.yaml")
    cache = _w(tmp_path, "{}\n", "c.jsonl")
    for args in (["eval", "-c", str(bad)], ["run", "-c", str(bad)], ["cache", "-c", str(bad)],
                 ["pairs", str(cache), "-c", str(bad)], ["train", "-c", str(bad)]):
        res = runner.invoke(app, args)
        line = _one_line_error(res, str(bad), "not valid YAML", "line ")
        assert "[" in line or "flow" in line  # the YAML problem itself is shown, not eaten as rich markup


def test_cli_cache_error_keeps_brackets(tmp_path):
    # rich markup used to eat "[...]" in the cache stage's errors
    bad = _w(tmp_path, "format: '[bold]x'\n")
    res = runner.invoke(app, ["cache", "-c", str(bad)])
    _one_line_error(res, f"{bad}: format:", "(got '[bold]x')")


PIPE = """out_dir: {out}
pool: {pool}
cache: {{import_routerbench: [{csv}]}}
pairs: {{max_pairs_per_prompt: 2, eval_fraction: 0.2}}
pairs_tokenizer: none
train: {{model_name_or_path: models/SmolLM2-135M-Instruct, max_steps: 1}}
eval: {{taus: [0.0, 1.0]}}
"""


@pytest.mark.parametrize("section,typo,want", [
    ("eval", "eval: {taus: [0.0, 1.0], tua: 1}", "eval.tua: unknown key (did you mean 'tau'?)"),
    ("eval", "eval: {baselines: [knn, nope]}", "eval.baselines: unknown baseline"),
    ("eval", "eval: {offered_models: [gpt-5]}", "eval.offered_models.0: model 'gpt-5' is not in the pool"),
    ("train", "train: {model_name_or_path: m, lora_rr: 8}", "train.lora_rr: unknown key (did you mean 'lora_r'?)"),
    ("pairs", "pairs: {reward: {lamda: 0.5}}", "pairs.reward.lamda: unknown key (did you mean 'lam'?)"),
    ("pairs", "pairs: {strategy: best}", "pairs.strategy: Input should be"),
    ("cache", "cache: {import_routerbench: [CSV], limit_per_fil: 3}", "cache.limit_per_fil: unknown key"),
    ("cache", "cache: {generate: {dataset: q.jsonl, concurency: 3}}", "cache.generate.concurency: unknown key"),
])
def test_run_checks_every_section_before_any_stage(tmp_path, section, typo, want):
    out = tmp_path / "out"
    csv = REPO / "data" / "examples" / "routerbench_sample.csv"
    text = PIPE.format(out=out, pool=REPO / "configs" / "pool_routerbench.yaml", csv=csv)
    lines = [line for line in text.splitlines() if not line.startswith(section + ":")]
    lines.append(typo.replace("CSV", str(csv)))
    cfg = _w(tmp_path, "\n".join(lines) + "\n", "p.yaml")
    res = runner.invoke(app, ["run", "-c", str(cfg)])
    _one_line_error(res, f"{cfg}: {want}")
    assert not out.exists()  # no stage started


def test_shipped_configs_load_with_the_one_loader():
    from xrouter_lite.cache import CacheConfig
    from xrouter_lite.evaluate import EvalConfig
    from xrouter_lite.pairs import PairsConfig
    from xrouter_lite.pipeline import check_pipeline
    from xrouter_lite.pool import load_pool

    load_config(CacheConfig, REPO / "configs" / "cache_gsm8k.yaml")
    assert load_config(PairsConfig, REPO / "configs" / "pairs.yaml") == PairsConfig()
    load_config(EvalConfig, REPO / "configs" / "eval.yaml")
    for name in ("pool.yaml", "pool_routerbench.yaml"):
        load_pool(REPO / "configs" / name)
    for name in ("example_routerbench.yaml", "quality_routerbench.yaml"):
        for cuda in (False, True):
            plan = check_pipeline(REPO / "configs" / name, cuda=cuda)
            assert plan.train.data_path.endswith("dpo_train_data.json")


def test_the_loader_reads_the_serve_settings_too(tmp_path):
    # serving keeps its own loader for now (ServeSettings.from_yaml); load_config is ready for it
    from xrouter_lite.serve import ServeSettings

    s = load_config(ServeSettings, REPO / "configs" / "serve.yaml", {"port": 9999, "tau": None})
    assert s.port == 9999
    with pytest.raises(ConfigError, match=r"s\.yaml: prot: unknown key \(did you mean 'port'\?\)"):
        load_config(ServeSettings, _w(tmp_path, "prot: 1\n", "s.yaml"))
