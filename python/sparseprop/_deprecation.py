"""Old module paths that keep working: a module ``__getattr__`` that finds a moved name
in its new home and says so with a DeprecationWarning."""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping


def moved_names(old_module: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for module ``old_module``: ``homes`` maps each old name to
    ``"new.module"`` (same name there) or ``"new.module:new_name"``. Other names raise
    AttributeError as usual. The new module is imported only when a name is asked for."""
    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = home.partition(":")
        new_name = new_name or name
        warnings.warn(f"{old_module}.{name} is deprecated: it moved to {module}.{new_name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
