"""metaft: meta-learning followed by supervised fine-tuning."""

__version__ = "0.1.0"

# ``${metaft.data_dir:}`` in conf/paths/default.yaml resolves wherever the config is read (Hydra
# runs, and code or tests that load the YAML with OmegaConf), as soon as metaft is imported.
from metaft.runtime.paths import register_resolvers as _register_resolvers  # noqa: E402

_register_resolvers()
