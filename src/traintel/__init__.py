"""traintel: OpenTelemetry-native observability for ML training.

import traintel
with traintel.init(project="cifar", name="resnet18", config=cfg, total_epochs=10) as run:
    for epoch in run.epochs():
        for batch in run.track(loader):
            loss = train_step(batch)
            run.log(loss=loss, lr=lr, samples=len(batch))
        run.log_eval(val_loss=evaluate())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traintel.core import env as _env
from traintel.integrations import registration as _registration
from traintel.version import __version__

if TYPE_CHECKING:  # types only: `import traintel` stays cheap for the command line
    import argparse
    from collections.abc import Mapping
    from typing import TypeAlias

    from _typeshed import DataclassInstance
    from typing_extensions import Unpack

    from traintel.run.facade import Run
    from traintel.run.settings import InitOptions

    #: what ``config=`` accepts: a mapping, a dataclass instance or parsed arguments
    ConfigInput: TypeAlias = Mapping[str, object] | DataclassInstance | argparse.Namespace | None


def init(
    project: str | None = None,
    name: str | None = None,
    config: ConfigInput = None,
    **options: Unpack[InitOptions],
) -> Run:
    """Start a run. Every option, its default and its environment variable:
    ``docs/configuration.md`` (from ``traintel.run.settings.Settings``); unknown options are refused
    with the closest valid name. ``OTEL_*`` variables configure export."""
    _env.keep_sdk_importable()  # the environment may have changed since `import traintel`
    from traintel.run.facade import Run
    from traintel.run.settings import settings_from

    return Run(settings_from({"project": project, "name": name, "config": config, **options}))


def current_run() -> Run | None:
    """The active run in this process, if any."""
    from traintel.run.live import newest

    return newest()  # type: ignore[return-value]  # every live run is a Run


def __getattr__(name: str) -> Any:
    if name == "Run":  # imported lazily: `import traintel` stays cheap for the CLI
        from traintel.run.facade import Run

        return Run
    raise AttributeError(f"module 'traintel' has no attribute {name!r}")


#: before anything imports the OpenTelemetry SDK: a bad value it reads at import never stops a run
_env.keep_sdk_importable()
#: TrainingArguments(report_to="traintel") works in any process that imported traintel
_registration.install()

__all__ = ["init", "current_run", "Run", "__version__"]
