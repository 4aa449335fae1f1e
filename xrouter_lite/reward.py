"""The cost-aware reward that ranks the models offered for one prompt.

    R = R_binary * (K - min(lambda * C, cost_max))

``R_binary`` is 1 when the model's answer was correct, else 0; ``C`` is the cost of that model's answer in the
chosen unit (``RewardConfig.cost_unit``):

- ``"usd"``: raw USD per query. Per-query costs are tiny (RouterBench: $0.00002 to $0.03), so ``lambda * C`` is
  ~1e-4 at lambda = 0.1: every correct answer scores ~K and cost matters only below any useful pair margin.
  lambda has no readable meaning here (it would have to be ~100-1000 to matter).
- ``"usd_per_1k"``: USD per 1,000 queries (C x 1000), the unit in which price lists are read. lambda is "reward
  lost per dollar per thousand queries"; it is meaningful in absolute money but its effect depends on how long
  the prompts and answers are, and one expensive model can saturate ``cost_max``.
- ``"normalized"`` (default): C divided by the cost of the most expensive *offered* model's answer to this
  prompt, so C is in [0, 1] and lambda is directly "the most reward a correct answer can lose to cost, as a
  fraction of K". This is the unit in which lambda is meaningful independently of the prompt, the dataset and the
  currency scale; it is also what a router must learn: a ranking among the models it is offered.

Errored calls are not answers: they are left out before the reward is computed, never scored as wrong
(``offered_rewards`` refuses a ``None`` correctness). With ``cost_max < K`` (enforced) a correct answer always
scores more than a wrong one (which scores 0, whatever it cost). Among correct answers the reward is strictly
decreasing in cost until the cap, so the best-reward model is the cheapest correct one for every lambda > 0:
lambda (with the pair margin) decides which *pairs* exist, i.e. whether "cheaper correct beats pricier correct"
is taught at all, not which model is best. See docs/BENCHMARKS.md ("Stage 2–3") for the measured sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, get_args

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

CostUnit = Literal["usd", "usd_per_1k", "normalized"]
COST_UNITS: tuple[str, ...] = get_args(CostUnit)


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class RewardConfig:
    """K, lambda, cost cap and cost unit of the reward. Defaults chosen from the lambda sweep (BENCHMARKS.md)."""

    k: float = 1.0
    lam: float = 0.1
    cost_max: float = 0.5
    cost_unit: CostUnit = "normalized"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k) and self.k > 0):
            raise ValueError(f"reward k must be a finite number > 0, got {self.k!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"reward lam (lambda) must be a finite number >= 0, got {self.lam!r}")
        if not (math.isfinite(self.cost_max) and 0 <= self.cost_max < self.k):
            raise ValueError(
                f"reward cost_max must be >= 0 and < k ({self.k}), got {self.cost_max!r}: otherwise a correct but "
                "expensive answer could score no better than a wrong one"
            )


def cost_in_unit(cost_usd: float, cfg: RewardConfig, max_offered_cost: float | None = None) -> float:
    """C for one answer, in ``cfg.cost_unit``. ``max_offered_cost`` (USD) is required for ``"normalized"``."""
    if not math.isfinite(cost_usd) or cost_usd < 0:
        raise ValueError(f"cost must be a finite number >= 0, got {cost_usd!r}")
    if cfg.cost_unit == "usd":
        return cost_usd
    if cfg.cost_unit == "usd_per_1k":
        return cost_usd * 1000.0
    if max_offered_cost is None:
        raise ValueError("the 'normalized' cost unit needs the most expensive offered model's cost")
    if max_offered_cost < cost_usd:
        raise ValueError(f"max_offered_cost {max_offered_cost!r} is below this answer's cost {cost_usd!r}")
    return 0.0 if max_offered_cost == 0 else cost_usd / max_offered_cost


def reward(correct: bool, cost_usd: float, cfg: RewardConfig, max_offered_cost: float | None = None) -> float:
    """R = R_binary * (K - min(lambda * C, cost_max)) for one answer."""
    if correct is None:
        raise ValueError("an errored call has no correctness: leave it out, do not score it")
    c = cost_in_unit(cost_usd, cfg, max_offered_cost)
    if not correct:
        return 0.0
    return cfg.k - min(cfg.lam * c, cfg.cost_max)


def offered_rewards(outcomes: Mapping[str, tuple[bool, float]], cfg: RewardConfig) -> dict[str, float]:
    """Rewards of the models offered for one prompt: ``{model: (is_correct, cost_usd)}`` -> ``{model: R}``.

    Pass exactly the offered models that have a valid (non-errored) answer: with ``"normalized"`` costs, C is
    relative to the most expensive of them.
    """
    if not outcomes:
        return {}
    top = max(cost for _, cost in outcomes.values())
    return {m: reward(ok, cost, cfg, top) for m, (ok, cost) in outcomes.items()}
