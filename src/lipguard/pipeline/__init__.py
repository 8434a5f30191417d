"""The main job, ``lipguard run``: every component on one environment, with an HTML report."""

from lipguard.pipeline.config import LEARNED_REWARDS, Reward, RunConfig, load_config
from lipguard.pipeline.results import RunResults
from lipguard.pipeline.run import checks, run_pipeline

__all__ = [
    "LEARNED_REWARDS",
    "Reward",
    "RunConfig",
    "RunResults",
    "checks",
    "load_config",
    "run_pipeline",
]
