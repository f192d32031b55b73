"""How every lmcompare package re-exports its public names: on first use (PEP 562 module __getattr__), so that
importing a package (the rule files do, at parse time) imports none of its modules' dependencies until a name is
used. A package declares `_API = {name: "module"}` (or `"module:attribute"` where the name differs), relative to
itself, and ends with `__getattr__, __dir__ = lazy_exports(__name__, _API)`."""

import importlib


def lazy_exports(package: str, table: dict):
    """The (__getattr__, __dir__) pair of a package that re-exports the names of `table` on first use."""

    def __getattr__(name):
        if name in table:
            module, _, attribute = table[name].partition(":")
            return getattr(importlib.import_module(f"{package}.{module}"), attribute or name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(table) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
