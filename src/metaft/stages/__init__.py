"""The stages behind ``train.py``: meta-training and evaluation (``meta``), fine-tuning (``finetune``).
Each imports the runtime, never another stage."""
from __future__ import annotations

from omegaconf import DictConfig


def main(cfg: DictConfig) -> float | None:
    """Run the stage ``task_name`` names (train, eval, finetune); return ``optimized_metric``'s value."""
    # Imported here, so ``train.py --help`` does not load torch and Lightning.
    if cfg.task_name == "finetune":
        from metaft.stages.finetune import finetune

        results = finetune(cfg)
    else:
        from metaft.stages.meta import evaluate, train

        results = evaluate(cfg) if cfg.task_name == "eval" else train(cfg)
    if cfg.get("optimized_metric"):
        if cfg.optimized_metric not in results:
            known = ", ".join(k for k in sorted(results) if k.startswith(("val/", "test/")) and "_step" not in k)
            raise ValueError(f"optimized_metric={cfg.optimized_metric} is not a metric of this run; use one of: {known}")
        return results[cfg.optimized_metric]
    return None
