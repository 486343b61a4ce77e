"""The types of metaft's settings, as dataclasses registered in Hydra's ConfigStore (group
``schema``: ``schema/train``, ``schema/eval``, ``schema/finetune``).

``metaft.runtime.validate`` checks each command-line value against the field its key names here,
before anything runs. A group's schema (``AlgorithmSchema``, ``DatasetSchema``, ...) declares the
settings its options share; a setting it does not declare (one algorithm's own) is checked against
the type of its default in the composed config, so a user's own config in ``--config-dir`` is
checked too. Declared here is what a default cannot say: a real number a config writes as ``40``,
a setting whose default is ``null`` or an interpolation, the words an integer setting also takes
(``target.shots=all``) and the strings a setting takes (``progress``). A field's metadata may give
``words`` (extra strings an int takes) or ``choices`` (the strings a str takes).

Imports no torch: ``train.py`` checks a command line in well under a second.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SCHEMA_GROUP = "schema"


def _words(*words: str) -> dict[str, Any]:
    return {"words": words}


def _choices(*choices: str) -> dict[str, Any]:
    return {"choices": choices}


@dataclass
class OptimizerSchema:
    """``algorithm.optimizer``, ``finetuner.optimizer`` (a ``torch.optim`` class, partial)."""
    lr: float = 0.001
    weight_decay: float = 0.0
    momentum: float = 0.0


@dataclass
class TrainerSchema:
    """``trainer`` (Lightning's Trainer arguments; ``hardware`` sets the device ones)."""
    max_steps: int = 3000
    max_time: Optional[str] = None
    val_check_interval: float = 500  # steps, or a fraction of an epoch
    check_val_every_n_epoch: Optional[int] = None
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    enable_model_summary: bool = False
    enable_progress_bar: Optional[bool] = None
    deterministic: bool = field(default=False, metadata=_words("warn"))
    use_distributed_sampler: bool = False
    accelerator: str = "cpu"
    devices: int = field(default=1, metadata=_words("auto"))
    num_nodes: int = 1
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1


@dataclass
class CheckpointSchema:
    every_n_train_steps: int = 500


@dataclass
class PathsSchema:
    root_dir: str = "."
    data_dir: str = "data"
    cache_dir: str = ".cache"
    output_dir: str = "outputs"


@dataclass
class AlgorithmSchema:
    """The settings several algorithms share (conf/algorithm/)."""
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: Optional[int] = None
    eval_inner_lr: Optional[float] = None
    first_order: bool = False
    inner_momentum: float = 0.0
    inner_eps: float = 1e-8
    inner_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    inner_batch: Optional[int] = None
    eval_inner_batch: Optional[int] = None
    zero_head: bool = False
    joint_forward: bool = False
    task_chunk: Optional[int] = None
    grad_clip: float = 0.0
    nonfinite: str = field(default="raise", metadata=_choices("raise", "skip"))
    inner_state: str = field(default="reset", metadata=_choices("reset", "carry"))
    optimizer: Optional[OptimizerSchema] = None


@dataclass
class DatasetSchema:
    """The settings the meta-training datasets share (conf/dataset/)."""
    ways: int = 5
    shots: int = 1
    queries: int = 15
    eval_queries: Optional[int] = None
    train_ways: Optional[int] = None
    train_shots: Optional[int] = None
    meta_batch_size: int = 32
    val_episodes: int = 200
    test_episodes: int = 1000
    eval_batch_size: int = 100
    image_size: int = 28
    channels: int = 1
    seed: int = 0
    download: bool = False
    augment: bool = False
    within_alphabet: bool = False
    lake_val_alphabets: int = 5
    amp_range: List[float] = field(default_factory=lambda: [0.1, 5.0])
    phase_range: List[float] = field(default_factory=lambda: [0.0, 3.141592653589793])
    x_range: List[float] = field(default_factory=lambda: [-5.0, 5.0])


@dataclass
class TargetSchema:
    """The settings the fine-tuning targets share (conf/target/)."""
    ways: Optional[int] = 5
    shots: int = field(default=1, metadata=_words("all"))
    val_per_class: int = 4
    test_per_class: int = 4
    batch_size: int = 32
    eval_batch_size: int = 200
    image_size: int = 28
    channels: int = 1
    seed: int = 0
    lake_val_alphabets: int = 5
    pool_points: int = 50
    val_points: int = 20
    grid_points: int = 1000
    amplitude: Optional[float] = None
    phase: Optional[float] = None


@dataclass
class ModelSchema:
    """The settings the networks share (conf/model/)."""
    in_channels: int = 1
    image_size: int = 28
    filters: int = 64
    out_features: int = 5
    # A real number that the CPU recipes write as 40.
    feature_scale: Optional[float] = None


@dataclass
class RunSchema:
    """The settings every stage has."""
    task_name: str = "train"
    seed: int = 0
    ckpt_path: Optional[str] = None
    test: bool = True
    optimized_metric: Optional[str] = None
    progress: str = field(default="auto", metadata=_choices("auto", "bar", "log"))
    progress_every_n_steps: int = 100
    progress_every_s: float = 30.0
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    checkpoint: CheckpointSchema = field(default_factory=CheckpointSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)
    model: Optional[ModelSchema] = None


@dataclass
class TrainLoggingSchema:
    images: bool = True
    predictions: bool = True


@dataclass
class TrainSchema(RunSchema):
    """``--config-name train``: meta-training."""
    algorithm: AlgorithmSchema = field(default_factory=AlgorithmSchema)
    dataset: DatasetSchema = field(default_factory=DatasetSchema)
    logging: TrainLoggingSchema = field(default_factory=TrainLoggingSchema)


@dataclass
class EvalSchema(TrainSchema):
    """``--config-name eval``: scoring a meta-checkpoint."""
    task_name: str = "eval"
    eval_split: str = field(default="test", metadata=_choices("test", "val"))
    allow_seen_classes: bool = False


@dataclass
class FinetunerSchema:
    optimizer: Optional[OptimizerSchema] = None
    grad_clip: float = 0.0


@dataclass
class EarlyStoppingSchema:
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class FinetuneLoggingSchema:
    images: bool = True


@dataclass
class FinetuneSchema(RunSchema):
    """``--config-name finetune``: supervised fine-tuning."""
    task_name: str = "finetune"
    target: TargetSchema = field(default_factory=TargetSchema)
    init: str = "meta"
    meta_ckpt: Optional[str] = None
    checkpoints: Dict[str, str] = field(default_factory=dict)
    head_init: str = field(default="auto", metadata=_choices("auto", "keep", "zero", "prototypes", "random"))
    metasgd_lrs: bool = False
    allow_seen_classes: bool = False
    finetuner: FinetunerSchema = field(default_factory=FinetunerSchema)
    early_stopping: EarlyStoppingSchema = field(default_factory=EarlyStoppingSchema)
    logging: FinetuneLoggingSchema = field(default_factory=FinetuneLoggingSchema)


SCHEMAS: dict[str, type] = {"train": TrainSchema, "eval": EvalSchema, "finetune": FinetuneSchema}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (``schema/<task_name>``); idempotent."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(group=SCHEMA_GROUP, name=name, node=node)


def stored_schema(task_name: str) -> type | None:
    """The dataclass registered for a stage (its ``task_name``), read back from the ConfigStore."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    register()
    try:
        node = ConfigStore.instance().load(f"{SCHEMA_GROUP}/{task_name}.yaml").node
    except Exception:  # no schema for that name (a user's own stage name): defaults' types only
        return None
    return OmegaConf.get_type(node)


@dataclass(frozen=True)
class Setting:
    """What the schema says of one key: its Python type, whether null is allowed, and the extra
    words (an int) or the only strings (a str) it takes."""
    type: Any
    optional: bool
    words: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``Optional[...]``, whether it was optional)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return hint, False


def setting(schema: type | None, key: str) -> Setting | None:
    """The schema's ``Setting`` for a dotted ``key`` (``algorithm.optimizer.lr``), or None when the
    schema does not declare it."""
    node: Any = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        if node is None or not dataclasses.is_dataclass(node):
            return None
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return None
        hint, optional = _unwrap(typing.get_type_hints(node)[part])
        if i == len(parts) - 1:
            meta = fields[part].metadata
            return Setting(hint, optional, tuple(meta.get("words", ())), tuple(meta.get("choices", ())))
        node = hint
    return None
