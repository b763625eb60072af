"""Optional dependencies: which pip extra brings what, and the message that says so.

traintel's core needs only its own dependencies; a feature that needs more (PyTorch for the demo,
nvidia-ml-py for GPU metrics, the frameworks for the integrations, matplotlib for plots, the gRPC
exporter, grafana-client) checks for its modules here and, where one is missing, fails or warns
with the exact ``pip install 'traintel[...]'`` that fixes it, instead of a bare
``ModuleNotFoundError`` or, worse, nothing at all.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

Extra = Literal["torch", "gpu", "integrations", "plots", "grpc", "grafana", "tensorboard"]

#: extra -> (the modules it provides, what a person would call it)
EXTRAS: dict[Extra, tuple[tuple[str, ...], str]] = {
    "torch": (("torch",), "PyTorch"),
    "gpu": (("pynvml",), "nvidia-ml-py"),
    "integrations": (("transformers", "lightning", "accelerate"), "the training frameworks"),
    "plots": (("matplotlib",), "matplotlib"),
    "grpc": (
        ("opentelemetry.exporter.otlp.proto.grpc",),
        "the OTLP/gRPC exporter (opentelemetry-exporter-otlp-proto-grpc)",
    ),
    "grafana": (("grafana_client",), "grafana-client"),
    "tensorboard": (("tensorboard",), "TensorBoard"),
}


class MissingExtra(ImportError):
    """A feature's optional dependency is not installed; the message names the extra."""

    def __init__(self, feature: str, extra: Extra, module: str) -> None:
        self.feature, self.extra, self.module = feature, extra, module
        super().__init__(hint(feature, extra, module), name=module)


def hint(feature: str, extra: Extra, module: str | None = None) -> str:
    """``"<feature> needs PyTorch (no module 'torch'): pip install 'traintel[torch]'"``."""
    modules, what = EXTRAS[extra]
    missing = f" (no module {module or modules[0]!r})"
    return f"{feature} needs {what}{missing}: pip install 'traintel[{extra}]'"


def missing(extra: Extra, module: str | None = None) -> str | None:
    """The first module of ``extra`` (or ``module``, one of them) that cannot be imported."""
    for name in (module,) if module else EXTRAS[extra][0]:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a parent package is missing, or blocked
            return name
    return None


def require(feature: str, extra: Extra, module: str | None = None) -> None:
    """Raise :class:`MissingExtra` when ``extra`` (or its ``module``) is not installed."""
    absent = missing(extra, module)
    if absent is not None:
        raise MissingExtra(feature, extra, absent)
