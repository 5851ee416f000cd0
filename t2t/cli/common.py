"""What every command shares: discovery, problem configs for Hydra, override checks, errors.

Hydra composes `t2t/configs/<command>.yaml`, with the built-in problems' experiment/ and
problem/ configs from `problems/configs/` on its search path. Every registered problem is
stored in Hydra's ConfigStore as `problem/<name>` with its options as fields (as fairseq does
for tasks), so `problem=<name> problem.<option>=...` works without YAML and unknown options
fail.
Before Hydra runs, `check_overrides` turns the usual mistakes into one line with close
matches instead of a Hydra stack trace.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t2t.errors import UserError, unknown_name

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package
_SIMPLE_TYPES = (int, float, str, bool, Path)


def fail(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def one_line_errors(function: Callable) -> Callable:
    """Report UserError as `error: ...` and exit 1; anything else is a bug: full traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except UserError as error:
            fail(str(error))

    return wrapper


def argv_value(argv: list[str], key: str) -> str | None:
    """Value of a `key=value` command-line override (the last one wins), if present."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")]
    return values[-1] if values else None


def discover_from_argv(argv: list[str]) -> None:
    """Import problems before Hydra composes anything: usr_dir may add the chosen one."""
    from t2t.registry import discover

    discover(argv_value(argv, "usr_dir"))


# -- problems as structured configs -----------------------------------------------------------


def _omegaconf_type(annotation: Any) -> Any:
    """Map a Python annotation to one OmegaConf can enforce, or Any when it cannot."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in _SIMPLE_TYPES:
        return annotation
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 else Any
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = _omegaconf_type(rest[0]) if len(rest) == 1 else Any
        return Any if inner is Any else typing.Optional[inner]  # noqa: UP045 (OmegaConf)
    if origin in (list, tuple) and args and args[0] in _SIMPLE_TYPES:
        return list[args[0]]
    return Any


def problem_config_class(problem_class: type) -> type:
    """A dataclass whose fields are the problem's options (plus its name)."""
    fields: list[tuple] = [("name", str, dataclasses.field(default=problem_class.name))]
    for option, (annotation, default) in problem_class.option_specs().items():
        if isinstance(default, list | tuple | dict):
            value = list(default) if isinstance(default, tuple) else default
            spec = dataclasses.field(default_factory=lambda v=value: v.copy())
        else:
            spec = dataclasses.field(default=default)
        fields.append((option, _omegaconf_type(annotation), spec))
    return dataclasses.make_dataclass(f"{problem_class.name}_options", fields)


MIXTURE = "mixture"


@dataclasses.dataclass
class MixtureOptions:
    """`problem=mixture`: several problems trained together by one model."""

    name: str = MIXTURE
    # Member problems: names, or {name: ..., option: value, ...} with their options.
    members: list[Any] = dataclasses.field(default_factory=list)
    rates: Any = "examples"  # "examples" (proportional to training size) or a weight per member
    temperature: float = 1.0  # > 1 evens the members out (rates ** 1/temperature)


def register_problem_configs() -> None:
    from hydra.core.config_store import ConfigStore

    from t2t.registry import problems

    store = ConfigStore.instance()
    for name in problems.names():
        store.store(group="problem", name=name, node=problem_config_class(problems.get(name)))
    store.store(group="problem", name=MIXTURE, node=MixtureOptions)


def build_problem(node: Any) -> Any:
    """The problem instance a composed `problem` config node describes."""
    from omegaconf import OmegaConf

    from t2t.registry import problems

    options = OmegaConf.to_container(node, resolve=True)
    if options.get("name") == MIXTURE:
        raise UserError("this command takes one problem, not a mixture; pass "
                        "problem=<member name>")
    return problems.get(options.pop("name"))(**options)


def build_problems(node: Any) -> tuple[list[Any], dict[str, Any]]:
    """The problems a `problem` node describes (one, or a mixture's members) and the mixing
    options (rates, temperature) for the data module."""
    from omegaconf import OmegaConf

    from t2t.registry import problems

    options = OmegaConf.to_container(node, resolve=True)
    if options.get("name") != MIXTURE:
        return [build_problem(node)], {}
    members = []
    for member in options["members"]:
        spec = {"name": member} if isinstance(member, str) else dict(member)
        if "name" not in spec:
            raise UserError(f"mixture member {member} has no name; give a problem name or "
                            f"{{name: ..., option: value}}")
        members.append(problems.get(spec.pop("name"))(**spec))
    if not members:
        raise UserError("problem=mixture needs problem.members=[name,name,...]")
    names = [m.name for m in members]
    if len(set(names)) < len(names):
        raise UserError(f"mixture members must differ, got {', '.join(names)}")
    return members, {"rates": options["rates"], "temperature": options["temperature"]}


# -- checking command-line overrides ---------------------------------------------------------


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config, list items included (problem.members.0.raw_dir)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig):
        children = [(key, node._get_node(key)) for key in node.keys()]
    elif isinstance(node, ListConfig):
        children = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return []
    keys = []
    for key, child in children:
        full = f"{prefix}{key}"
        keys += [full, *_flat_keys(child, f"{full}.")]
    return keys


# Hydra's own flags that take a value (`--cfg job`): not overrides.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                     "-cn", "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def split_overrides(argv: list[str]) -> list[str]:
    """The key=value overrides among the command-line arguments (Hydra's flags removed)."""
    overrides, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument in _FLAGS_WITH_VALUE:
            skip = True
        elif not argument.startswith("-"):
            overrides.append(argument)
    return overrides


def problem_config_groups() -> set[str]:
    """The config groups the built-in problems add (problems/configs/, on every command's
    Hydra search path): not in t2t/configs/, which names no problem but a default."""
    from importlib.resources import files

    return {entry.name for entry in files("problems.configs").iterdir()
            if entry.is_dir() and entry.name != "__pycache__"}


def check_overrides(command: str, config_name: str, argv: list[str]) -> None:
    """Fail with one clear line on an unknown group choice, key or a badly typed value."""
    from hydra import compose, initialize_config_dir

    from t2t.registry import problems

    overrides = split_overrides(argv)

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        # The problems' groups count where the command's config puts them on its search path.
        groups = set(loader.list_groups("")) | {
            group for group in problem_config_groups()
            if loader.get_group_options(group, config_name=config_name)}
        group_overrides, value_keys = [], []
        for override in overrides:
            if "=" not in override:
                raise UserError(f"argument '{override}' is not key=value; "
                                f"`{command} --help` shows the options")
            key = override.split("=", 1)[0]
            if key.startswith(("+", "~", "hydra")):
                continue
            if key in groups:
                choice = override.split("=", 1)[1]
                # The command's config names its search path (the problems' configs too).
                options = loader.get_group_options(key, config_name=config_name)
                if choice not in options:
                    if key == "problem":
                        problems.get(choice)  # raises with close matches among the problems
                    raise unknown_name(f"{key}", choice, options, f"choices: {', '.join(options)}")
                group_overrides.append(override)
            else:
                value_keys.append(key)
        try:
            config = compose(config_name, overrides=group_overrides)
        except Exception as error:  # missing mandatory group, e.g. problem
            message = str(error).splitlines()[0]
            if "problem" in message:
                raise UserError("no problem given; pass problem=NAME (`t2t-problems` lists "
                                "them)") from None
            raise UserError(message) from None
        known = _flat_keys(config)
        for key in value_keys:
            if key not in known:
                _unknown_key(command, key, known, config)
        try:
            config = compose(config_name, overrides=overrides)
        except Exception as error:
            cause = error.__cause__ or error
            message = (getattr(cause, "msg", None) or str(cause)).splitlines()[0]
            full_key = getattr(cause, "full_key", None)
            where = f" for {full_key}" if full_key else ""
            raise UserError(f"bad value{where}: {message}") from None
        from omegaconf import OmegaConf

        missing = [key for key in config if OmegaConf.is_missing(config, key)]  # ckpt=???
        if missing:
            raise UserError(f"{command} needs {', '.join(f'{key}=...' for key in missing)}; "
                            f"`{command} --cfg job` prints every option")


def _unknown_key(command: str, key: str, known: list[str], config: Any) -> typing.NoReturn:
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    if parent == "problem":
        raise unknown_name("option", leaf, siblings,
                           f"its options: {', '.join(s for s in siblings if s != 'name')}",
                           where=f" for problem {config.problem.name}")
    candidates = siblings if parent in known else known
    raise unknown_name("option", key if parent not in known else leaf, candidates,
                       f"`{command} --cfg job` prints every option")


# Options whose values are free text (a sentence, a dot-bracket structure): quoted for Hydra,
# whose override grammar would otherwise reject brackets, commas and the like.
_FREE_TEXT = ("input",)


def quote_free_text(argv: list[str]) -> list[str]:
    out = []
    for argument in argv:
        key, _, value = argument.partition("=")
        if key in _FREE_TEXT and value and value[0] not in "'\"":
            value = "'" + value.replace("'", "\\'") + "'"
            argument = f"{key}={value}"
        out.append(argument)
    return out


def run_hydra(command: str, config_name: str, task: Callable[[Any], None]) -> None:
    """Discover problems, check the overrides, then hand over to Hydra's main."""
    import hydra

    sys.argv[1:] = quote_free_text(sys.argv[1:])
    argv = sys.argv[1:]
    try:
        discover_from_argv(argv)
        register_problem_configs()
        if not any(a in ("--help", "-h", "--hydra-help") for a in argv):
            check_overrides(command, config_name, argv)
    except UserError as error:
        fail(str(error))
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(
        one_line_errors(task)
    )()
