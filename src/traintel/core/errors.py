"""Error classification: what broke, how bad it is, and what to try.

A classifier looks at the exception type (by name, so torch need not be imported), its message
and the operation it escaped from. The first rule that matches wins; rules are data, so adding a
failure mode is one line.
"""

from __future__ import annotations

import re
import traceback as tb
from dataclasses import dataclass

from traintel.core.vocabulary import ErrorType, Severity


@dataclass(frozen=True)
class Classification:
    error_type: ErrorType
    severity: Severity
    hints: tuple[str, ...]


HINTS: dict[ErrorType, tuple[str, ...]] = {
    "oom": (
        "Reduce the batch size (or use gradient accumulation to keep the effective batch).",
        "Enable gradient checkpointing for large models (activation recomputation).",
        "Train in mixed precision (torch.autocast with bf16/fp16) to halve activation memory.",
        "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to reduce fragmentation.",
        "Check reserved-but-unallocated memory: a large gap means fragmentation, not size.",
    ),
    "cuda": (
        "Re-run with CUDA_LAUNCH_BLOCKING=1 to find the failing kernel.",
        "A device-side assert is often an out-of-range index (labels >= num_classes).",
        "Check `nvidia-smi -q` for Xid errors and ECC faults; the GPU may need a reset.",
    ),
    "distributed": (
        "Check that every rank reaches the same collective (a rank that skipped a step hangs "
        "the others).",
        "Set NCCL_DEBUG=INFO (and TORCH_DISTRIBUTED_DEBUG=DETAIL) to see which rank failed.",
        "Raise the process-group timeout for slow steps (init_process_group(timeout=...)).",
        "Look for a straggler rank on the 'Training overview' dashboard.",
    ),
    "nonfinite_loss": (
        "Lower the learning rate or add warm-up.",
        "Clip gradients (torch.nn.utils.clip_grad_norm_) and watch grad_norm before the NaN.",
        "In fp16, use a GradScaler or switch to bf16.",
        "Check the input batch for NaN/Inf values.",
    ),
    "data": (
        "Run the data loader alone (num_workers=0) to get the real traceback.",
        "Check tensor shapes and dtypes at the model input against the dataset's output.",
        "Look for corrupt or undecodable files; log the sample index in __getitem__.",
    ),
    "config": (
        "Check the configuration value named in the message against its expected type/range.",
        "Compare with the last working run: `traintel logs compare RUN_A RUN_B`.",
    ),
    "model_loading": (
        "Check that the checkpoint matches the model architecture (missing/unexpected keys).",
        "Use strict=False only if the difference is intended; map keys for renamed layers.",
    ),
    "network": (
        "Check connectivity to the named host; retry with backoff for transient failures.",
        "For hub downloads, pre-fetch artefacts and run offline (HF_HUB_OFFLINE=1).",
    ),
    "checkpoint_io": (
        "Check free space and permissions of the checkpoint directory.",
        "Write checkpoints to a temporary name and rename when complete.",
    ),
    "interrupted": (
        "The run was stopped by a signal or Ctrl-C; resume from the last checkpoint.",
        "On a cluster, SIGTERM usually means preemption or a time limit: checkpoint more often.",
    ),
    "other": (
        "Read the traceback; `traintel report RUN --format md` collects the context for "
        "a bug report.",
    ),
}

#: (error type, severity, exception type names, message pattern, operation pattern); all given
#: parts must match, the first matching rule wins, so specific rules come before broad ones.
_RULES: tuple[tuple[ErrorType, Severity, tuple[str, ...], str | None, str | None], ...] = (
    ("interrupted", "low", ("KeyboardInterrupt", "RunInterrupted", "SystemExit"), None, None),
    ("oom", "critical", ("OutOfMemoryError", "MemoryError"), None, None),
    ("oom", "critical", (), r"out of memory|CUBLAS_STATUS_ALLOC_FAILED", None),
    (
        "distributed",
        "high",
        ("DistBackendError", "DistError", "DistStoreError", "DistNetworkError"),
        None,
        None,
    ),
    (
        "distributed",
        "high",
        (),
        r"\bNCCL\b|\bgloo\b|ProcessGroup|collective operation timeout|"
        r"Watchdog caught",
        None,
    ),
    ("cuda", "critical", ("AcceleratorError", "CudaError"), None, None),
    (
        "cuda",
        "critical",
        (),
        r"CUDA error|device-side assert|cuDNN|CUBLAS|illegal memory access",
        None,
    ),
    ("nonfinite_loss", "high", ("NonFiniteLossError",), None, None),
    ("nonfinite_loss", "high", (), r"\b(loss|gradient)s?\b.*\b(nan|inf)\b|non-?finite", None),
    (
        "model_loading",
        "high",
        (),
        r"state_dict|Missing key\(s\)|Unexpected key\(s\)|"
        r"from_pretrained|size mismatch for",
        None,
    ),
    # the operation says most about what failed: run.track reports "data_loading"
    ("checkpoint_io", "high", (), None, r"checkpoint|ckpt|save|restore|resume"),
    ("data", "medium", (), None, r"data|batch|loader|collate|preprocess|augment"),
    ("model_loading", "high", (), None, r"model.*load|load.*model|pretrained|weights"),
    ("config", "medium", (), None, r"config|setup|args|hparams"),
    (
        "checkpoint_io",
        "high",
        (),
        r"PytorchStream(Reader|Writer)|Weights only load failed|"
        r"Parent directory .* does not exist",
        None,
    ),
    (
        "checkpoint_io",
        "high",
        ("OSError", "PicklingError", "UnpicklingError"),
        r"checkpoint|ckpt|\.(pt|pth|safetensors)\b",
        None,
    ),
    ("data", "medium", ("UnicodeDecodeError", "UnidentifiedImageError", "DecodeError"), None, None),
    (
        "data",
        "medium",
        (),
        r"DataLoader worker|shapes cannot be multiplied|must have the same "
        r"dtype|must match the size of tensor|Expected input batch_size|"
        r"is invalid for input of size|expected scalar type|"
        r"Expected .*(dtype|shape|size|channels)|Dimension out of range",
        None,
    ),
    # a bare timeout in training is almost always a collective waiting for a lost rank
    ("distributed", "high", ("TimeoutError",), None, None),
    (
        "network",
        "medium",
        (
            "ConnectionError",
            "HTTPError",
            "URLError",
            "SSLError",
            "gaierror",
            "ProxyError",
            "Timeout",
        ),
        None,
        None,
    ),
    ("config", "medium", ("ConfigError", "ConfigurationError", "ValidationError"), None, None),
    (
        "config",
        "medium",
        ("ValueError", "TypeError", "KeyError"),
        r"config|hyperparam|argument",
        None,
    ),
)


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def classify(
    exc: BaseException, operation: str | None = None, text: str | None = None
) -> Classification:
    """``text``: the exception's message as recorded (:func:`exception_text`), else read here."""
    names = _type_names(exc)
    message = f"{type(exc).__name__}: {exception_text(exc) if text is None else text}"
    for error_type, severity, types, pattern, op_pattern in _RULES:
        if types and not names & set(types):
            continue
        if pattern and not re.search(pattern, message, re.IGNORECASE):
            continue
        if op_pattern and not (operation and re.search(op_pattern, operation, re.IGNORECASE)):
            continue
        return Classification(error_type, severity, HINTS[error_type])
    return Classification("other", "medium", HINTS["other"])


#: frames of PyTorch's data loading: an exception whose traceback passes through them was raised
#: while a batch was made (a dataset's ``__getitem__``, a collate function, a sampler)
_DATA_LOADING_FRAMES = re.compile(r"[/\\]torch[/\\]utils[/\\]data[/\\]")


def operation_of(exc: BaseException) -> str | None:
    """The operation an exception escaped from, read from its traceback when nobody named one:
    ``data_loading`` when it passed through PyTorch's data loading. Frameworks that iterate the
    loader themselves (the Hugging Face Trainer, Lightning, Accelerate) never say where a batch
    failed, and a ``ValueError`` from a dataset is a data error there as under ``run.track``."""
    frame = exc.__traceback__
    while frame is not None:
        if _DATA_LOADING_FRAMES.search(frame.tb_frame.f_code.co_filename):
            return "data_loading"
        frame = frame.tb_next
    return None


#: characters of an exception's message kept in the record (and in its traceback's text): a
#: 50 MB message cost 41 s of the training thread in classification and redaction
MAX_MESSAGE = 16_384


def exception_text(exc: BaseException, limit: int = MAX_MESSAGE) -> str:
    """``str(exc)``, cut to ``limit`` characters with its size noted, and never an exception of
    its own: an exception whose ``__str__`` raises is named by its type."""
    try:
        text = str(exc)
    except Exception as failed:
        try:
            why = type(failed).__name__
        except Exception:
            why = "an error"
        return f"<{type(exc).__name__}: str() raised {why}>"
    return cut(text, limit)


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, its full size said."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [cut: {len(text):,} characters in all]"


def format_traceback(exc: BaseException, limit: int = 50, message_limit: int = MAX_MESSAGE) -> str:
    """The traceback as Python prints it, with each message of the chain cut to
    ``message_limit`` characters (a huge message is otherwise repeated in full); never raises."""
    try:
        formatted = tb.TracebackException(type(exc), exc, exc.__traceback__, limit=limit)
        _cut_messages(formatted, message_limit, set())
        return "".join(formatted.format())
    except Exception:  # an exception object that even the traceback module cannot read
        return f"{type(exc).__name__}: {exception_text(exc, message_limit)}\n"


def _cut_messages(formatted: tb.TracebackException, limit: int, seen: set[int]) -> None:
    """Cut the message of each exception of a formatted chain (``_str``: the text
    ``TracebackException`` prints, the same attribute from Python 3.10 to 3.13)."""
    if id(formatted) in seen:
        return
    seen.add(id(formatted))
    text = getattr(formatted, "_str", None)
    if isinstance(text, str) and len(text) > limit:
        formatted._str = cut(text, limit)  # type: ignore[attr-defined]  # see above
    for other in (
        formatted.__cause__,
        formatted.__context__,
        *(getattr(formatted, "exceptions", None) or ()),
    ):
        if other is not None:
            _cut_messages(other, limit, seen)


class NonFiniteLossError(ArithmeticError):
    """Raised by ``run.check_finite`` / ``halt_on_nonfinite`` when a loss is NaN or infinite."""


class RunInterrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives, after the record has been flushed."""
