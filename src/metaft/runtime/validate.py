"""Check a command line's overrides before anything runs: unknown keys (with "did you mean"),
group options that do not exist, values of the wrong type (each named with the key, the value and
the type wanted), settings left to the user (``???``), and optional packages a choice needs.

Hydra only says that an unknown key "is not in struct" and advises ``+key=value``, which passes
a typo on to a constructor (a TypeError deep inside Lightning); a wrong type surfaces as a raw
TypeError, or not at all until the inner loop. Checked here against the config Hydra would
compose (its search path: the package's configs, ``--config-dir`` and ``hydra.searchpath``
included) and the schema of ``metaft.runtime.schema``, before Hydra creates the run directory.
Imports no torch, so ``train.py`` starts as fast as before.
"""
from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from metaft.runtime.schema import Setting, SCHEMAS, setting, stored_schema

# Hydra's own flags: with any of these no job runs, or the command is Hydra's business. (A config
# directory of the user's, --config-dir or --config-path, is checked like the package's own.)
NO_CHECK_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                  "--resolve", "--package", "-p"}
VALUE_FLAGS = {"--config-name", "-cn", "--experimental-rerun", "--config-dir", "-cd", "--config-path", "-cp"}
# Suggested first when several options of a group have a setting (the one most runs use).
PREFERRED = {"dataset": "omniglot", "target": "omniglot", "model": "conv4"}
# The form a setting the user must give takes, by a part of its key.
FORMS = {"class_lists": " (a list of class folders, e.g. [cat,dog,emu], or a text file with one folder name a line)"}


class Command(NamedTuple):
    """What ``split_argv`` finds on a command line: the config name, the overrides, the user's
    config directories (``--config-dir``) and the primary config path that replaces the package's
    (``--config-path``, as given: Hydra resolves a relative one against the ``@hydra.main`` module)."""
    config_name: str
    overrides: list[str]
    config_dirs: list[str]
    config_path: str | None = None


class ConfigError(SystemExit):
    """A command-line problem found before the run: the message, exit status 1."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("error: " + "\nerror: ".join(problems))
        self.problems = list(problems)


def program() -> str:
    """How this command was typed: ``python train.py`` in a checkout, else the installed ``metaft``."""
    return "python train.py" if Path(sys.argv[0]).name == "train.py" else "metaft"


def split_argv(argv: Sequence[str]) -> Command | None:
    """The config name, overrides, ``--config-dir`` and ``--config-path`` of a ``train.py`` command
    line, or None when Hydra's own flags take over (help, printing the config, a rerun)."""
    name, overrides, dirs, path, args = "train", [], [], None, list(argv)
    while args:
        a = args.pop(0)
        flag = a.split("=", 1)[0]
        if flag in NO_CHECK_FLAGS:
            return None
        if flag in VALUE_FLAGS:
            value = a.split("=", 1)[1] if "=" in a else (args.pop(0) if args else "")
            if flag == "--experimental-rerun":
                return None
            if flag in ("--config-dir", "-cd"):
                dirs.append(value)
            elif flag in ("--config-path", "-cp"):
                path = value  # Hydra keeps the last one given
            else:
                name = value
        elif a in ("-m", "--multirun"):
            continue
        elif not a.startswith("-"):
            overrides.append(a)
    return Command(name, overrides, dirs, path)


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


def type_problem(key: str, value: Any, default: Any, schema: type | None = None) -> str | None:
    """Why ``value`` cannot be the setting ``key`` (None: it can): the type the schema declares for
    ``key`` (``schema``, else the first stage's schema that declares it), else its ``default``'s."""
    declared = setting(schema, key) if schema is not None else None
    if declared is None and schema is None:
        declared = next((d for d in (setting(s, key) for s in SCHEMAS.values()) if d is not None), None)
    if value is None:
        return None  # null: the setting's "none" (Hydra drops a group's option the same way)
    if declared is None:
        if default is None or isinstance(default, str):
            return None  # strings take whatever the command line gives
        declared = Setting(_type_of(default), optional=True)
    wanted = _wanted(declared, value)
    if wanted is None:
        return None
    example = f", e.g. {key}={default}" if type(default) in (int, float) else ""
    return f"{key}={value!r}: {key} wants {wanted}{example}"


def _type_of(default: Any) -> Any:
    """The type a default's value stands for."""
    if isinstance(default, (ListConfig, list)):
        return list
    if isinstance(default, (DictConfig, dict)):
        return dict
    return type(default)


def _wanted(declared: Setting, value: Any) -> str | None:
    """What ``declared`` wants, in words, when ``value`` is not it (None: it is)."""
    kind = getattr(declared.type, "__origin__", None) or declared.type  # List[float] -> list
    if isinstance(value, str) and value in declared.words:
        return None
    extra = f" (or {', '.join(declared.words)})" if declared.words else ""
    if kind is bool:
        ok, wanted = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), f"a whole number{extra}"
    elif kind is float:
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), f"a number{extra}"
    elif kind is list:
        ok, wanted = isinstance(value, list), "a list, e.g. [1,2]"
    elif kind is dict:
        ok, wanted = isinstance(value, dict), "a mapping, e.g. {a:1}"
    elif kind is str and declared.choices:
        ok, wanted = str(value) in declared.choices, f"one of {', '.join(declared.choices)}"
    else:  # strings take whatever the command line gives; Any takes anything
        return None
    return None if ok else wanted


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


class Configs:
    """The configs Hydra would search for a command: the primary ones (``primary``: a directory, or
    ``pkg://metaft.conf``), then the user's ``--config-dir`` and ``hydra.searchpath`` entries, in
    Hydra's order. ``package`` is the package's own configs when ``primary`` is the user's
    (``--config-path``): the reference a user's config files are checked against."""

    def __init__(self, primary: Path | str, config_dirs: Sequence[str] = (), searchpath: Sequence[str] = (),
                 package: Path | str | None = None) -> None:
        from hydra._internal.config_repository import ConfigRepository
        from hydra._internal.utils import create_config_search_path
        from hydra.core.config_search_path import SearchPathQuery

        primary = str(primary.resolve()) if isinstance(primary, Path) else primary
        package = str(package.resolve()) if isinstance(package, Path) else package
        self.primary, self.package = primary, package or primary
        self.user = bool(config_dirs or searchpath) or self.package != self.primary
        self.search_path = create_config_search_path(primary)
        for d in config_dirs:  # as Hydra's --config-dir: after the primary configs, before the schemas
            self.search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(d)}",
                                     anchor=SearchPathQuery(provider="schema"))
        for entry in searchpath:  # as hydra.searchpath=[...]
            self.search_path.prepend(provider="hydra.searchpath in command-line", path=str(entry),
                                     anchor=SearchPathQuery(provider="schema"))
        self.repo = ConfigRepository(config_search_path=self.search_path)
        self.package_source = _source(self.package)

    def add_main_searchpath(self, config_name: str) -> None:
        """The primary config's own ``hydra.searchpath`` entries, as Hydra adds them when the command
        line gives none (a user's ``--config-path`` config that builds on ``pkg://metaft.conf``)."""
        from hydra._internal.config_repository import ConfigRepository
        from hydra.core.config_search_path import SearchPathQuery

        try:
            loaded = self.repo.load_config(config_name)
        except Exception:
            return
        entries = OmegaConf.select(loaded.config, "hydra.searchpath", default=None) if loaded is not None else None
        if not entries:
            return
        for entry in entries:
            self.search_path.prepend(provider="hydra.searchpath in main", path=str(entry),
                                     anchor=SearchPathQuery(provider="schema"))
        self.repo = ConfigRepository(config_search_path=self.search_path)

    def is_users(self, loaded: Any) -> bool:
        """Whether a loaded config file is the user's (not the package's, not Hydra's own)."""
        return loaded.provider in USER_PROVIDERS and loaded.path.rstrip("/") != self.package_source

    def is_group(self, name: str) -> bool:
        return self.repo.group_exists(name)

    def options(self, group: str) -> list[str]:
        """A group's options, those in subfolders too (``recipe=omniglot_cpu/maml``)."""
        from hydra.core.object_type import ObjectType

        found = list(self.repo.get_group_options(group, ObjectType.CONFIG))
        for sub in self.repo.get_group_options(group, ObjectType.GROUP):
            if sub.startswith("_"):  # parts other options include (conf/algorithm/_base), not options
                continue
            found += [f"{sub}/{o}" for o in self.options(f"{group}/{sub}")]
        return sorted(set(found))

    def load(self, group: str, option: str) -> DictConfig | None:
        """One option's own config (its file, without its defaults list), or None."""
        try:
            loaded = self.repo.load_config(f"{group}/{option}")
        except Exception:
            return None
        if loaded is None or not isinstance(loaded.config, DictConfig):
            return None
        with open_dict(loaded.config):
            loaded.config.pop("defaults", None)
        return loaded.config

    def compose(self, config_name: str, overrides: list[str]) -> DictConfig:
        """The composed config, with Hydra's node (``hydra.runtime.choices``)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.types import RunMode

        return ConfigLoaderImpl(config_search_path=self.search_path).load_configuration(
            config_name=config_name, overrides=overrides, run_mode=RunMode.RUN)


def check_overrides(config_dir: Path | str, config_name: str, overrides: Sequence[str],
                    config_dirs: Sequence[str] = (), config_path: str | None = None) -> None:
    """Raise ``ConfigError`` naming each unknown key, unknown group option, value of the wrong type,
    setting left to the user and missing optional package. ``config_dir`` is the package's configs
    (a directory, or ``pkg://metaft.conf``); ``config_dirs`` the user's (``--config-dir``);
    ``config_path`` the user's primary configs that replace the package's (``--config-path``,
    resolved as Hydra does: ``cli.primary_config_path``), checked against the package's as
    ``--config-dir`` ones are; ``hydra.searchpath=[...]`` among the overrides, or in a
    ``--config-path`` primary config, adds its entries, as it does for Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # a syntax error: Hydra's own message says where
        return
    searchpath = next((o.value() for o in parsed if o.get_key_element() == "hydra.searchpath"), None) or []
    try:
        configs = Configs(config_path or config_dir, config_dirs, [str(e) for e in searchpath],
                          package=config_dir if config_path else None)
        if config_path and not searchpath:
            configs.add_main_searchpath(config_name)
    except Exception:  # a --config-dir that does not exist: Hydra's own message says so
        return
    groups, values, problems = [], [], []
    for o in parsed:
        key = o.key_or_group
        if o.is_hydra_override() or key.startswith("hydra") or o.package is not None:
            continue
        if configs.is_group(key):  # a group choice (dataset=omniglot): composed below
            problems += group_problems(configs, o)
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
    try:
        base = configs.compose(config_name, groups)
    except Exception:  # an unknown config name, or a group option's own error: Hydra's message says which
        return
    choices = {k: v for k, v in base.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(base):
        del base["hydra"]
    # The stage's schema: by the composed config's task_name, so a user's own primary config
    # (--config-dir, --config-name mine) is checked as the stage it runs.
    schema = stored_schema(str(base.get("task_name", config_name)))
    known = list(_keys(base))
    for o in values:
        key, prefix = o.key_or_group, o.get_key_element()[: len(o.get_key_element()) - len(o.key_or_group)]
        exists, default, interpolated = _node(base, key)
        if not exists:
            close = suggestions(key, known)
            if prefix == "++" or (prefix == "+" and not close):
                continue  # a deliberate addition: an option the class takes that the config does not list
            other = None if close or config_name == "eval" else another_option(configs, key, choices)
            if other is not None:
                problems.append(f"{o.input_line}: {other}")
                continue
            hint = f"did you mean {' or '.join(close)}?" if close else f"{key} is not a setting of the {config_name} config"
            if prefix == "+":
                problems.append(f"{o.input_line}: {hint} (+ adds a new key, which the code would then reject)")
                continue
            msg = f"{o.input_line}: {hint}"
            if not close:
                msg += f"; list the settings with `{program()} --cfg job`"
            if config_name == "eval":
                msg += (" (eval composes the default dataset before it reads the checkpoint's config: a key only the "
                        f"checkpoint's config has takes ++, e.g. ++{o.input_line.lstrip('+')})")
            problems.append(msg)
            continue
        if interpolated and setting(schema, key) is None:
            continue  # its type is its interpolation's, unknown here
        given = _values(o)
        for v in given or []:
            problem = type_problem(key, v, default, schema)
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
    problems += user_config_problems(configs, config_name, groups, base, schema)
    problems += package_problems(base)
    if config_name == "finetune":
        problems += checkpoint_problems(base, values)
    if problems:
        raise ConfigError(problems)


# The search-path providers of a user's configs (Hydra's names for --config-dir and hydra.searchpath;
# "main" is --config-path's, and "hydra.searchpath in main" the entries its primary config adds:
# the user's unless they are the package's own configs).
USER_PROVIDERS = ("command-line", "hydra.searchpath in command-line", "main", "hydra.searchpath in main")


def _source(primary: str) -> str:
    """A config directory as Hydra's config sources name it (``file:///abs/dir``, ``pkg://mod``)."""
    return (primary if "://" in primary else f"file://{primary}").rstrip("/")


def user_config_problems(configs: Configs, config_name: str, groups: list[str], base: DictConfig,
                         schema: type | None) -> list[str]:
    """The settings a user's own config files (from ``--config-dir`` or ``hydra.searchpath``) write,
    checked as command-line settings are: each key against the config the package alone composes
    (a close known key: "did you mean"; a key with no close one is taken as a deliberate addition,
    as ``+key=value`` is), each value against the schema and that config's defaults. Keys under a
    node of the user's with its own ``_target_`` are that class's arguments, not checked."""
    if not configs.user:
        return []
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.types import RunMode

    try:
        defaults = ConfigLoaderImpl(config_search_path=configs.search_path).compute_defaults_list(
            config_name, groups, RunMode.RUN).defaults
    except Exception:
        return []
    own = []
    for d in defaults:
        if d.config_path is None or d.config_path.startswith("hydra/"):
            continue
        loaded = configs.repo.load_config(d.config_path)
        if loaded is None or not configs.is_users(loaded) or not isinstance(loaded.config, DictConfig):
            continue
        node = OmegaConf.create(OmegaConf.to_container(loaded.config, resolve=False))
        node.pop("defaults", None)
        where = loaded.path.removeprefix("file://")
        own.append((f"{d.config_path}.yaml in {where}", d.package or "", node))
    if not own:
        return []
    reference = _package_config(configs, config_name, groups, base)
    if reference is None:
        return []
    known = list(_keys(reference))
    problems = []
    for label, package, node in own:
        for key, value, interpolated in _leaves(node, f"{package}." if package else "", reference):
            exists, default, ref_interpolated = _node(reference, key)
            if exists:
                if interpolated or (ref_interpolated and setting(schema, key) is None):
                    continue
                problem = type_problem(key, value, None if ref_interpolated else default, schema)
                if problem:
                    problems.append(f"{label}: {problem}")
                continue
            close = suggestions(key, known)
            if close:
                problems.append(f"{label}: {key}: did you mean {' or '.join(close)}?")
    return problems


def _package_config(configs: Configs, config_name: str, groups: list[str], base: DictConfig) -> DictConfig | None:
    """The config the package's own files compose for this command: its config of that name (else
    the stage's, by ``task_name``) with the group choices it has options for."""
    package = Configs(configs.package)
    name = config_name if package.repo.config_exists(config_name) else str(base.get("task_name", ""))
    if not package.repo.config_exists(name):
        return None
    kept = []
    for choice in groups:  # group=option, each a single option here (a sweep's first)
        group, _, option = choice.partition("=")
        group = group.lstrip("+~")
        if package.is_group(group) and option in package.options(group):
            kept.append(choice)
    try:
        reference = package.compose(name, kept)
    except Exception:
        return None
    with open_dict(reference):
        del reference["hydra"]
    return reference


def _leaves(node: DictConfig, prefix: str, reference: DictConfig) -> Iterable[tuple[str, Any, bool]]:
    """(key, raw value, is an interpolation) of every setting ``node`` writes, under ``prefix``;
    not below a node whose ``_target_`` the reference does not have there (a class of the user's)."""
    for k in node.keys():
        key = f"{prefix}{k}"
        if OmegaConf.is_interpolation(node, k):
            yield key, None, True
            continue
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            target = child.get("_target_")
            if target is not None and OmegaConf.select(reference, f"{key}._target_", default=None) != target:
                continue
            yield from _leaves(child, f"{key}.", reference)
        else:
            yield key, OmegaConf.to_container(child) if isinstance(child, ListConfig) else child._value(), False


def package_problems(base: DictConfig) -> list[str]:
    """A chosen logger or callback whose optional package (its ``_requires_``) is not installed."""
    from metaft.runtime.requirements import missing_package

    problems = []
    for group in ("logger", "callbacks"):
        node = base.get(group)
        for name in node or []:
            problem = missing_package(group, name, node._get_node(name))
            if problem:
                problems.append(problem)
    return problems


def group_problems(configs: Configs, o: Any) -> list[str]:
    """An option of a config group that has no file (``algorithm=mamll``), with the closest options."""
    key = o.key_or_group
    if o.is_delete():
        return []
    options = configs.options(key)
    if o.is_sweep_override():
        if not (o.is_choice_sweep() or o.is_range_sweep()):
            return []
        given = list(o.sweep_string_iterator())
    else:
        given = [o.value()]
    problems = []
    for v in given:
        if isinstance(v, list):  # a list of options (logger=[tensorboard,csv]): each must exist
            problems += [p for item in v for p in _option_problem(key, item, options)]
        else:
            problems += _option_problem(key, v, options)
    return problems


def _option_problem(key: str, v: Any, options: list[str]) -> list[str]:
    if v is None or str(v) in options or not isinstance(v, (str, int)):
        return []
    close = _closest(str(v), options, cutoff=0.6)
    hint = f"did you mean {' or '.join(f'{key}={c}' for c in close)}? " if close else ""
    return [f"{key}={v}: there is no {key} {v} (conf/{key}/{v}.yaml); {hint}{key} is one of: {', '.join(options)}"]


def another_option(configs: Configs, key: str, choices: dict[str, Any]) -> str | None:
    """Why ``key`` (``dataset.ways``) is not a setting when another option of its group has it:
    ``dataset=sinusoid is regression: it has no ways; did you mean dataset=omniglot?``."""
    group, _, rest = key.partition(".")
    if not rest or not configs.is_group(group):
        return None
    chosen = choices.get(group)
    having, ready = [], []
    for option in configs.options(group):
        if option == chosen or "/" in option:
            continue
        c = configs.load(group, option)
        if c is not None and _node(c, rest)[0]:
            having.append(option)
            if "???" not in OmegaConf.to_yaml(c):  # usable without further settings: suggested first
                ready.append(option)
    if not having:
        return None
    what = f"{group}={chosen}:"
    if group in ("dataset", "target") and chosen is not None:
        own = configs.load(group, str(chosen))
        if own is not None and not _node(own, "ways")[0]:  # classes come with ways
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
