"""Check a command line's overrides before anything runs: unknown keys (with "did you mean"),
and values of the wrong type, each named with the key, the value and the type wanted.

Hydra only says that an unknown key "is not in struct" and advises ``+key=value``, which passes
a typo on to a constructor (a TypeError deep inside Lightning); a wrong type surfaces as a raw
TypeError, or not at all until the inner loop. Checked here against the composed defaults, before
Hydra creates the run directory. Imports no torch, so ``train.py`` starts as fast as before.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

# Words some integer settings also accept (the constructor handles them).
WORDS = {"target.shots": {"all"}, "trainer.devices": {"auto"}, "trainer.max_steps": set()}
# Settings that are real numbers whatever their default is written as (by the last word of the key).
REAL_WORDS = {"lr", "scale", "clip", "decay", "momentum", "temperature", "delta", "eps", "ratio", "rate"}
# Hydra's own flags: with any of these no job runs, or the command is Hydra's business.
NO_CHECK_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                  "--resolve", "--package", "-p", "--config-path", "-cp", "--config-dir", "-cd"}
VALUE_FLAGS = {"--config-name", "-cn", "--experimental-rerun"}
# Suggested first when several options of a group have a setting (the one most runs use).
PREFERRED = {"dataset": "omniglot", "target": "omniglot", "model": "conv4"}
# The form a setting the user must give takes, by a part of its key.
FORMS = {"class_lists": " (a list of class folders, e.g. [cat,dog,emu], or a text file with one folder name a line)"}


class ConfigError(SystemExit):
    """A command-line problem found before the run: the message, exit status 1."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("error: " + "\nerror: ".join(problems))
        self.problems = list(problems)


def split_argv(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(config name, overrides) of a ``train.py`` command line, or None when Hydra's own flags
    take over (help, printing the config, another config directory)."""
    name, overrides, args = "train", [], list(argv)
    while args:
        a = args.pop(0)
        flag = a.split("=", 1)[0]
        if flag in NO_CHECK_FLAGS:
            return None
        if flag in VALUE_FLAGS:
            value = a.split("=", 1)[1] if "=" in a else (args.pop(0) if args else "")
            if flag == "--experimental-rerun":
                return None
            name = value
        elif a in ("-m", "--multirun"):
            continue
        elif not a.startswith("-"):
            overrides.append(a)
    return name, overrides


def _keys(cfg: Any, prefix: str = "") -> Iterable[str]:
    """Every key path of a config, nested ones included."""
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            path = f"{prefix}{k}"
            yield path
            node = cfg._get_node(k)
            if isinstance(node, DictConfig):
                yield from _keys(node, f"{path}.")


def _node(cfg: DictConfig, key: str) -> tuple[bool, Any, bool]:
    """(exists, raw value, is an interpolation) of ``key`` in ``cfg``, without resolving."""
    parent: Any = cfg
    parts = key.split(".")
    # ``key in cfg`` is False for a key whose value is missing (``???``, a setting the user must
    # give, e.g. target.root): look the key up among the node's keys instead.
    for p in parts[:-1]:
        if not isinstance(parent, DictConfig) or p not in parent.keys():
            return False, None, False
        parent = parent._get_node(p)
    if not isinstance(parent, DictConfig) or parts[-1] not in parent.keys():
        return False, None, False
    node = parent._get_node(parts[-1])
    if OmegaConf.is_interpolation(parent, parts[-1]):
        return True, None, True
    if isinstance(node, (DictConfig, ListConfig)):
        return True, node, False
    return True, node._value(), False


def type_problem(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` at ``key`` (None: it can)."""
    if value is None or default is None:
        return None
    words = WORDS.get(key, set())
    if isinstance(value, str) and value in words:
        return None
    extra = f" (or {', '.join(sorted(words))})" if words else ""
    if isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(default, int) and key.rsplit(".", 1)[-1].rsplit("_", 1)[-1] in REAL_WORDS:
        # A real-valued setting that a config happens to write as a whole number (feature_scale: 40).
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, int):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), f"a whole number{extra}"
    elif isinstance(default, float):
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, (ListConfig, list)):
        ok, wanted = isinstance(value, list), "a list, e.g. [1,2]"
    elif isinstance(default, (DictConfig, dict)):
        ok, wanted = isinstance(value, dict), "a mapping, e.g. {a:1}"
    else:  # strings take whatever the command line gives
        return None
    if ok:
        return None
    example = f", e.g. {key}={default}" if type(default) in (int, float) else ""
    return f"{key}={value!r}: {key} wants {wanted}{example}"


def suggestions(key: str, known: Sequence[str]) -> list[str]:
    """Known keys close to ``key``: the same parent first, then anywhere."""
    parent, _, leaf = key.rpartition(".")
    # Leaves compared among siblings: full paths share their prefix, which makes any two look alike.
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = [siblings[k] for k in _closest(leaf, list(siblings), cutoff=0.7)]
    return close or _closest(key, known, cutoff=0.85)


def _closest(word: str, options: list[str], cutoff: float) -> list[str]:
    """Up to three close matches, only those about as close as the closest (``max_step``: not
    ``max_time`` beside ``max_steps``)."""
    scored = sorted(((difflib.SequenceMatcher(None, word, o).ratio(), o) for o in options), reverse=True)
    scored = [(r, o) for r, o in scored if r >= cutoff]
    return [o for r, o in scored[:3] if r >= scored[0][0] - 0.1] if scored else []


def _values(override: Any) -> list[Any] | None:
    """The values an override gives (each of a sweep's), or None when they are not plain values
    (an Optuna interval, a glob)."""
    if not override.is_sweep_override():
        return [override.value()]
    if override.is_choice_sweep() or override.is_range_sweep():
        return list(override.sweep_iterator())
    return None


def check_overrides(config_dir: Path, config_name: str, overrides: Sequence[str]) -> None:
    """Raise ``ConfigError`` naming each unknown key and each value of the wrong type."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # a syntax error: Hydra's own message says where
        return
    groups, values, problems = [], [], []
    for o in parsed:
        key = o.key_or_group
        if o.is_hydra_override() or key.startswith("hydra") or o.package is not None:
            continue
        if (config_dir / key).is_dir():  # a group choice (dataset=omniglot): composed below
            problems += group_problems(config_dir, o)
            if o.is_sweep_override():
                first = next(iter(o.sweep_string_iterator()), None)
                if first is None:
                    continue
                groups.append(f"{o.get_key_element()}={first}")
            else:
                groups.append(o.input_line)
        elif not o.is_delete():
            values.append(o)
    if problems:  # the other settings cannot be checked without the groups they belong to
        raise ConfigError(problems)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            base = compose(config_name=config_name, overrides=groups, return_hydra_config=True)
    except Exception:  # an unknown config name, or a group option's own error: Hydra's message says which
        return
    finally:
        GlobalHydra.instance().clear()
    choices = {k: v for k, v in base.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(base):
        del base["hydra"]
    known = list(_keys(base))
    for o in values:
        key, prefix = o.key_or_group, o.get_key_element()[: len(o.get_key_element()) - len(o.key_or_group)]
        exists, default, interpolated = _node(base, key)
        if not exists:
            close = suggestions(key, known)
            if prefix == "++" or (prefix == "+" and not close):
                continue  # a deliberate addition: an option the class takes that the config does not list
            other = None if close or config_name == "eval" else another_option(config_dir, key, choices)
            if other is not None:
                problems.append(f"{o.input_line}: {other}")
                continue
            hint = f"did you mean {' or '.join(close)}?" if close else f"{key} is not a setting of the {config_name} config"
            if prefix == "+":
                problems.append(f"{o.input_line}: {hint} (+ adds a new key, which the code would then reject)")
                continue
            msg = f"{o.input_line}: {hint}"
            if not close:
                msg += "; list the settings with `python train.py --cfg job`"
            if config_name == "eval":
                msg += (" (eval composes the default dataset before it reads the checkpoint's config: a key only the "
                        f"checkpoint's config has takes ++, e.g. ++{o.input_line.lstrip('+')})")
            problems.append(msg)
            continue
        if interpolated:
            continue
        given = _values(o)
        for v in given or []:
            problem = type_problem(key, v, default)
            if problem:
                problems.append(problem)
                break
    # Settings the chosen configs leave for the user (``???``, e.g. target.root of target=folder):
    # named now, not as OmegaConf's MissingMandatoryValue from inside the run.
    given = {o.key_or_group for o in values}
    for key in known:  # raw values, unresolved: interpolations may need Hydra's runtime
        missing = _node(base, key)[1] == "???"
        if missing and not key.startswith("hydra") and key not in given and not any(key.startswith(g + ".") for g in given):
            form = next((f for part, f in FORMS.items() if part in key.split(".")), "")
            problems.append(f"{key} must be given: add {key}=... to the command line{form}")
    if config_name == "finetune":
        problems += checkpoint_problems(base, values)
    if problems:
        raise ConfigError(problems)


def group_problems(config_dir: Path, o: Any) -> list[str]:
    """An option of a config group that has no file (``algorithm=mamll``), with the closest options."""
    key = o.key_or_group
    if o.is_delete():
        return []
    # Options in subfolders count too (recipe=omniglot_cpu/maml).
    options = sorted(p.relative_to(config_dir / key).with_suffix("").as_posix() for p in (config_dir / key).rglob("*.yaml"))
    if o.is_sweep_override():
        if not (o.is_choice_sweep() or o.is_range_sweep()):
            return []
        given = list(o.sweep_string_iterator())
    else:
        given = [o.value()]
    problems = []
    for v in given:
        if v is None or str(v) in options or not isinstance(v, (str, int)):
            continue
        close = _closest(str(v), options, cutoff=0.6)
        hint = f"did you mean {' or '.join(f'{key}={c}' for c in close)}? " if close else ""
        problems.append(f"{key}={v}: there is no {key} {v} (conf/{key}/{v}.yaml); {hint}"
                        f"{key} is one of: {', '.join(options)}")
    return problems


def another_option(config_dir: Path, key: str, choices: dict[str, Any]) -> str | None:
    """Why ``key`` (``dataset.ways``) is not a setting when another option of its group has it:
    ``dataset=sinusoid is regression: it has no ways; did you mean dataset=omniglot?``."""
    group, _, rest = key.partition(".")
    if not rest or not (config_dir / group).is_dir():
        return None
    chosen = choices.get(group)
    having, ready = [], []
    for f in sorted((config_dir / group).glob("*.yaml")):
        if f.stem == chosen:
            continue
        c = OmegaConf.load(f)
        if isinstance(c, DictConfig) and _node(c, rest)[0]:
            having.append(f.stem)
            if "???" not in OmegaConf.to_yaml(c):  # usable without further settings: suggested first
                ready.append(f.stem)
    if not having:
        return None
    what = f"{group}={chosen}:"
    if group in ("dataset", "target") and (config_dir / group / f"{chosen}.yaml").is_file():
        own = OmegaConf.load(config_dir / group / f"{chosen}.yaml")
        if isinstance(own, DictConfig) and not _node(own, "ways")[0]:  # classes come with ways
            what = f"{group}={chosen} is regression:"
    best = PREFERRED.get(group) if PREFERRED.get(group) in having else (ready or having)[0]
    return (f"{what} it has no {rest}; did you mean {group}={best}? ({rest} is a setting of "
            f"{', '.join(f'{group}={h}' for h in having)})")


def checkpoint_problems(base: DictConfig, values: Sequence[Any]) -> list[str]:
    """Fine-tuning from a checkpoint needs one (``meta_ckpt``), and it must exist: named with the
    other settings rather than after the target is built."""
    given = {o.key_or_group: o.value() for o in values if not o.is_sweep_override()}
    if any(o.key_or_group in ("init", "meta_ckpt") for o in values if o.is_sweep_override()):
        return []  # each job of the sweep is checked when it starts
    if given.get("ckpt_path", base.get("ckpt_path")) is not None:
        return []  # resuming a run: its stored config names the checkpoint it started from
    init = str(given.get("init", base.get("init")))
    path = given.get("meta_ckpt", base.get("meta_ckpt"))
    mapping = {**(OmegaConf.to_container(base.checkpoints) if base.get("checkpoints") else {}),
               **{k.split(".", 1)[1]: v for k, v in given.items() if k.startswith("checkpoints.")}}
    if init not in ("random", "pretrained", "meta") and init not in mapping:
        return [f"init={init}: use random, pretrained, meta or a name in checkpoints ({', '.join(mapping) or 'empty'})"]
    if init == "random":
        path = path or None  # only the architecture: optional
    elif not path and not mapping.get(init):
        return [f"init={init} fine-tunes a stage-1 checkpoint: add meta_ckpt=PATH (a stage-1 run directory or its "
                ".ckpt file), or init=random model=... to start from random weights"]
    if path and not Path(str(path)).expanduser().exists():
        return [f"meta_ckpt={path}: no such file or directory; give a stage-1 run directory or a .ckpt file"]
    return []
