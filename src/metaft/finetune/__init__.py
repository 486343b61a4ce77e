"""Stage 2: supervised fine-tuning from a meta-checkpoint (``--config-name finetune``)."""
from metaft.finetune.targets import FolderTarget, OmniglotTarget, SinusoidTarget, SupervisedTarget
from metaft.finetune.module import FineTuner, init_head, load_body, metasgd_step_sizes

__all__ = ["FineTuner", "FolderTarget", "OmniglotTarget", "SinusoidTarget", "SupervisedTarget", "init_head",
           "load_body", "metasgd_step_sizes"]
