"""Where metaft's files are: the configs (the package ``metaft.conf``: ``conf/`` of a checkout, which
``src/metaft/conf`` links to, or the installed copy's), the data and the outputs."""
from __future__ import annotations

import os
from pathlib import Path


def conf_dir() -> Path:
    """The directory of the configs Hydra reads as ``pkg://metaft.conf``: the installed package's
    ``metaft/conf``, or in a checkout its ``conf/`` (through the ``src/metaft/conf`` link)."""
    return Path(__file__).resolve().parents[1] / "conf"


def project_root() -> Path:
    """The directory holding ``conf/train.yaml`` and ``train.py``: ``$METAFT_ROOT`` if set, else the
    checkout this package was installed from (an editable install or ``PYTHONPATH=src``); in an
    installed copy without a checkout, the package's own directory (its ``conf/`` is the configs)."""
    env = os.environ.get("METAFT_ROOT")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[3], Path.cwd()]
    for root in candidates:
        if (root / "conf" / "train.yaml").is_file() and (root / "train.py").is_file():
            return root
    if not env and (conf_dir() / "train.yaml").is_file():
        return conf_dir().parent
    raise FileNotFoundError(
        f"cannot find the metaft project (conf/train.yaml and train.py) in {', '.join(map(str, candidates))}: "
        "run from the project directory, or set METAFT_ROOT to it"
    )


def default_data_dir() -> str:
    """``paths.data_dir`` when ``METAFT_DATA_DIR`` is unset, relative to the working directory:
    ``data`` (the project's own, git-ignored folder, where downloads go) if it exists, or if there
    is no shared ``../shared/data`` beside the project (a fresh clone); else ``../shared/data``,
    the shared copy that tests and CI read."""
    own, shared = Path("data"), Path("..") / "shared" / "data"
    return str(shared) if not own.is_dir() and shared.is_dir() else str(own)


# Groups ``--help`` leaves out: Hydra's own, and those other choices pick (recipe/* follow
# experiment= and algorithm=; paths has one option).
_HIDDEN_GROUPS = ("hydra", "recipe", "paths", "study")  # study: python -m metaft.study, not train.py


def help_groups() -> str:
    """The config groups users choose from, one line each: ``  group: option, option``."""
    conf = conf_dir()
    lines = []
    for d in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in _HIDDEN_GROUPS and not p.name.startswith("_")):
        options = sorted(f.stem for f in d.glob("*.yaml"))
        lines.append(f"  {d.name}: {', '.join(options)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """``${metaft.data_dir:}`` (``conf/paths/default.yaml``) and ``${metaft.help_groups:}`` (``--help``)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("metaft.data_dir", default_data_dir, replace=True)
    OmegaConf.register_new_resolver("metaft.help_groups", help_groups, replace=True)
