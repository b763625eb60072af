"""``TrainingArguments(report_to="traintel")`` without a call of the user's.

transformers finds ``report_to`` names in a module-level dict,
``transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK``, which it reads when a
``Trainer`` is made; it has no registry for other packages (no entry points). So ``import
traintel`` adds ``"traintel"`` to that dict: at once when transformers' integrations are already
imported, else the moment they are (a one-shot import hook that waits for that one module and
imports nothing itself). transformers does not promise this dict; if it goes, ``report_to``
says "traintel is not supported" and ``callbacks=[TraintelCallback()]`` still works.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger("traintel.integrations")

#: the module holding transformers' ``report_to`` names
TRANSFORMERS_REGISTRY = "transformers.integrations.integration_utils"


def register_report_to(module: ModuleType) -> None:
    """Add ``"traintel"`` to transformers' ``report_to`` names, kept in ``module``."""
    from traintel.integrations.huggingface import register

    register(module)


def install() -> None:
    """Make ``report_to="traintel"`` work in this process (``import traintel`` calls this)."""
    loaded = sys.modules.get(TRANSFORMERS_REGISTRY)
    if loaded is not None:
        _quietly(register_report_to, loaded)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(TRANSFORMERS_REGISTRY, register_report_to))


def _quietly(then: Callable[[ModuleType], None], module: ModuleType) -> None:
    """A registration that fails (transformers changed) must never fail the user's import."""
    try:
        then(module)
    except Exception as exc:  # noqa: BLE001  (any failure: report_to alone stops working)
        log.debug(
            "traintel: could not register report_to='traintel' with %s: %r", module.__name__, exc
        )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then(module)`` once ``name`` has been imported, then leaves ``sys.meta_path``.
    Every other import passes by after one string comparison."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # the finders after this one find the module itself
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    """The module's own loader, and ``then(module)`` after it has run the module."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _quietly(self.then, module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...: the real loader's
        return getattr(self.loader, name)
