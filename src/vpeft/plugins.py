"""Registry packages (methods, study kinds, data formats): each plug-in is a module of its package
that registers itself when imported, so the package imports all of them once, here."""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_plugins(package: str, path: Iterable[str], *, infrastructure: Iterable[str] = (),
                   order: Iterable[str] = ()) -> list[str]:
    """Import every module of ``package`` (its ``__path__``) except the ``infrastructure`` ones:
    those named in ``order`` first, in that order (registration order is listing order), then
    the others sorted. Returns the imported module names."""
    found = {m.name for m in pkgutil.iter_modules(path)} - set(infrastructure)
    ordered = [m for m in order if m in found]
    modules = ordered + sorted(found - set(ordered))
    for module in modules:
        importlib.import_module(f"{package}.{module}")
    return modules
