"""The problem registry (name -> class), and discovery of user code that adds to it."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t2t.errors import UserError, unknown_name


def _where(cls: type) -> str:
    """'module.Class (file:line)': enough to find a definition."""
    try:
        file, line = inspect.getsourcefile(cls), inspect.getsourcelines(cls)[1]
        return f"{cls.__module__}.{cls.__qualname__} ({file}:{line})"
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"


def _same_definition(a: type, b: type) -> bool:
    # Re-importing one file (a notebook cell run twice, usr_dir loaded again) defines an
    # equal class anew; that is not a clash, the newer class replaces the older one.
    return a.__qualname__ == b.__qualname__ and _where(a) == _where(b)


class Registry:
    """Maps names to classes; loud on duplicates and on unknown names."""

    def __init__(self, kind: str, list_command: str):
        self.kind = kind
        self.list_command = list_command
        self._classes: dict[str, type] = {}

    def register(self, name_or_cls: str | type | None = None) -> Any:
        """Decorator: `@reg.register`, `@reg.register()` or `@reg.register("name")`."""
        if isinstance(name_or_cls, type):
            return self._add(name_or_cls, None)
        return lambda cls: self._add(cls, name_or_cls)

    def _add(self, cls: type, name: str | None) -> type:
        name = name or snake_case(cls.__name__)
        old = self._classes.get(name)
        if old is not None and old is not cls and not _same_definition(old, cls):
            raise UserError(
                f"{self.kind} '{name}' is registered twice: by {_where(old)} and by {_where(cls)}; "
                f"rename one of them"
            )
        cls.name = name
        self._classes[name] = cls
        return cls

    def get(self, name: str) -> type:
        try:
            return self._classes[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._classes,
                               f"`{self.list_command}` lists all") from None

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def __len__(self) -> int:
        return len(self._classes)


def snake_case(name: str) -> str:
    """CamelCase -> camel_case, keeping acronyms whole: 'TranslateDEEN' -> 'translate_deen'."""
    out = []
    for i, ch in enumerate(name):
        boundary = i > 0 and ch.isupper() and (
            not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower())
        )
        out.append(("_" if boundary else "") + ch.lower())
    return "".join(out)


problems = Registry("problem", "t2t-problems")

register_problem: Callable[..., Any] = problems.register


def get_problem_class(name: str) -> type:
    return problems.get(name)


ENTRY_POINT_GROUP = "t2t.problems"


def discover(usr_dir: str | Path | None = None) -> None:
    """Import the built-in problems, installed plugins (entry points) and `usr_dir`.

    Safe to call again in every process (DDP ranks, data workers, notebooks): imports are cached.
    """
    importlib.import_module("problems")  # explicit imports of every built-in problem
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()
    if usr_dir:
        import_usr_dir(usr_dir)


def import_usr_dir(usr_dir: str | Path) -> None:
    """Import a user's .py file or package directory, like tensor2tensor's --t2t_usr_dir."""
    path = Path(usr_dir).expanduser().resolve()
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise UserError(f"usr_dir {path} is a directory without __init__.py; "
                            f"point usr_dir at a .py file or a package")
        module_name, location = path.name, path / "__init__.py"
    elif path.suffix == ".py" and path.is_file():
        module_name, location = path.stem, path
    else:
        raise UserError(f"usr_dir {usr_dir} is not a .py file or a package directory")
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(
        location
    ):
        return
    spec = importlib.util.spec_from_file_location(
        module_name, location, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    module = importlib.util.module_from_spec(spec)
    # Registered before executing so that the module's classes pickle by reference and a
    # package's relative imports resolve.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
