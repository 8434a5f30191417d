"""The main job, ``lipguard run``: every component on one environment, with an HTML report."""

from lipguard.pipeline.config import RunConfig, load_config
from lipguard.pipeline.run import checks, run_pipeline

__all__ = ["RunConfig", "checks", "load_config", "run_pipeline"]
