"""The corpus (tests/corpus/): public training scripts, each adapted minimally and run as its
own process the way its README says, with the few lines of traintel a user adds. Each prints
what it computed itself as JSON on its last line; what traintel recorded (steps, losses, best
values, evaluations, errors, throughput within 10 %, status) must equal it.

Each script's first line cites its source (repository, path, commit, licence). Seconds each
takes on the project's 2-core machine are in docs/distributed.md's note on the corpus.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import read_lines
from stack_fixture import eventually, promql
from traintel.record.reader import Records
from traintel.reports.analysis import Series, summarize

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
#: the run ids traintel makes (docs/distributed.md): start time and six hex digits
RUN_ID_FORM = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
LAUNCHER_IDS = ("TRAINTEL_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")
#: torchrun as the DDP tutorial runs it: two processes on this host
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_IDS}
    env.update(
        {
            "TRAINTEL_DIR": str(tmp_path / "runs"),
            "OTEL_SDK_DISABLED": "true",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]),
        }
    )
    return env


def run(
    tmp_path: Path, script: str, *args: str, launcher: tuple[str, ...] = (), timeout: float = 300
) -> list[dict[str, Any]]:
    """Run a corpus script in ``tmp_path``; the JSON lines it printed (one per process)."""
    done = subprocess.run(
        [*(launcher or (sys.executable,)), str(CORPUS / script), *args],
        cwd=tmp_path,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return [found for line in done.stdout.splitlines() if (found := _json(line)) is not None]


def _json(line: str) -> dict[str, Any] | None:
    """A line the script printed as its figures (frameworks print dicts too, not as JSON)."""
    try:
        found = json.loads(line)
    except ValueError:
        return None
    return (
        found
        if isinstance(found, dict)
        and "run_dir" in found
        or isinstance(found, dict)
        and "global_step" in found
        else None
    )


def summary_of(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def cli(tmp_path: Path, *args: str) -> Any:
    """What `traintel ARGS --format json` prints, parsed."""
    done = subprocess.run(
        [sys.executable, "-m", "traintel.cli", *args, "--format", "json"],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def own_rate(log_times: list[list[float]]) -> float:
    """The script's own rate, from (step, time, per-step count) at each logged step: what the
    steps after the first logged one processed, over the time between the first and the last."""
    first, last = log_times[0], log_times[-1]
    counted = sum((b[0] - a[0]) * b[2] for a, b in zip(log_times, log_times[1:]))
    return counted / (last[1] - first[1])


def by_step(values: dict[str, Any]) -> dict[int, Any]:
    return {int(step): value for step, value in values.items()}


def test_the_corpus_cites_its_sources() -> None:
    scripts = sorted(CORPUS.glob("*.py"))
    assert len(scripts) >= 8
    for script in scripts:
        first = script.read_text().splitlines()[0]
        assert re.match(
            r"# Source: https://github\.com/[\w.-]+/[\w.-]+/blob/[0-9a-f]{40}/\S+ "
            r"(\S.* )?\((BSD-3-Clause|MIT|Apache-2\.0)",
            first,
        ), script.name


def test_pytorch_examples_mnist(tmp_path: Path) -> None:
    """A loss every 10 batches of 21 an epoch (the last batch of each logged), epochs counted
    from 1, a test loss and accuracy after each; then `traintel logs summary`."""
    (measured,) = run(tmp_path, "mnist.py", "--epochs", "2")
    summary, losses = summary_of(measured["run_dir"]), by_step(measured["losses"])
    lines = read_lines(Path(measured["run_dir"]))
    assert {s["step"]: s["metrics"]["loss"] for s in lines.of("step")} == losses
    assert [e["epoch"] for e in lines.of("epoch")] == [1, 2]  # the script's own numbers
    assert [e["steps"] for e in lines.of("epoch")] == [21, 21]
    assert (summary["status"], summary["steps"], summary["last_step"]) == ("finished", 42, 41)
    assert summary["samples"] == 42 * 64 and (summary["epochs"], summary["epoch"]) == (2, 2)
    assert (summary["loss"]["final"], summary["loss"]["best"]) == (losses[41], min(losses.values()))
    tests = by_step(measured["tests"])
    assert {e["step"]: e["metrics"] for e in lines.of("eval")} == tests
    assert summary["eval"]["test_loss"]["mode"] == "min"
    assert summary["eval"]["test_loss"]["best"] == min(t["test_loss"] for t in tests.values())
    assert summary["eval"]["accuracy"]["mode"] == "max"
    assert summary["eval"]["accuracy"]["best"] == max(t["accuracy"] for t in tests.values())
    samples_rate = own_rate(measured["log_times"])
    assert summary["throughput"]["samples_per_s"] == pytest.approx(samples_rate, rel=0.1)
    assert summary["throughput"]["steps_per_s"] == pytest.approx(samples_rate / 64, rel=0.1)

    shown = cli(tmp_path, "logs", "summary", measured["run_dir"])
    assert (shown["steps"], shown["samples"], shown["epochs"]) == (42, 42 * 64, 2)
    assert shown["throughput"]["samples_per_s"] == pytest.approx(samples_rate, rel=0.1)


def test_pytorch_examples_word_language_model(tmp_path: Path) -> None:
    (measured,) = run(tmp_path, "word_language_model.py", "--save", str(tmp_path / "model.pt"))
    summary, losses = summary_of(measured["run_dir"]), by_step(measured["losses"])
    # numbered from 1 with initial_step=0: the first log, at batch 5, stands for 6 batches
    assert (summary["steps"], summary["last_step"]) == (measured["batches"],) * 2
    assert {
        s["step"]: s["metrics"]["loss"] for s in read_lines(Path(measured["run_dir"])).of("step")
    } == losses
    assert summary["loss"]["best"] == min(losses.values())
    assert summary["eval"]["val_loss"]["best"] == measured["best_val_loss"]
    assert summary["eval"]["test_loss"]["last"] == measured["test_loss"]
    assert summary["eval"]["val_ppl"]["mode"] == "min"
    assert summary["throughput"]["tokens_per_s"] == pytest.approx(
        own_rate(measured["log_times"]), rel=0.1
    )


def test_nanogpt(tmp_path: Path) -> None:
    """max_iters 240, a loss and lr every 10 iterations, val/loss every 40; /status read by the
    script at iteration 120 and at the end; then `traintel logs summary`."""
    (measured,) = run(tmp_path, "nanogpt.py")
    summary, losses = summary_of(measured["run_dir"]), by_step(measured["losses"])
    iterations, tokens_per_iter = measured["iterations"], measured["log_times"][0][2]
    steps = read_lines(Path(measured["run_dir"])).of("step")
    assert (summary["steps"], summary["last_step"]) == (iterations, iterations - 1) == (241, 240)
    assert {s["step"]: s["metrics"]["loss"] for s in steps} == losses
    assert {s["step"]: s["metrics"]["lr"] for s in steps} == by_step(measured["lrs"])
    assert summary["tokens"] == iterations * tokens_per_iter
    assert summary["loss"]["final"] == losses[iterations - 1]
    evals = by_step(measured["evals"])
    best_step = min(evals, key=evals.get)
    assert summary["eval"]["val/loss"] == {
        "last": evals[max(evals)],
        "best": evals[best_step],
        "best_step": best_step,
        "mode": "min",
    }
    assert evals[best_step] == pytest.approx(measured["best_val_loss"])
    # log_eval says whether each evaluation is the best so far
    assert by_step(measured["best"]) == {
        step: evals[step] == min(evals[s] for s in evals if s <= step) for step in evals
    }
    tokens_rate = own_rate(measured["log_times"])
    assert summary["throughput"]["tokens_per_s"] == pytest.approx(tokens_rate, rel=0.1)
    assert summary["throughput"]["steps_per_s"] == pytest.approx(
        tokens_rate / tokens_per_iter, rel=0.1
    )

    half = measured["status_at_half"]
    assert (half["step"], half["steps"], half["total_steps"]) == (120, 121, 240)
    assert half["latest"]["loss"] == losses[120]
    # the script's own ETA: the iterations left at its mean dt so far (the first iteration's
    # excluded, as nanoGPT's MFU estimate lets the loop settle). traintel's is at the recent
    # rate: on a machine shared with the suite's other workers the two differ by up to ~20 %
    times = {step: t for step, t, _ in measured["log_times"]}
    assert half["eta_s"] == pytest.approx((240 - 120) * (times[120] - times[0]) / 120, rel=0.25)
    end = measured["status"]
    assert (end["step"], end["steps"]) == (240, 241)
    assert end["rates"]["steps_per_second"] == pytest.approx(tokens_rate / tokens_per_iter, rel=0.1)

    shown = cli(tmp_path, "logs", "summary", measured["run_dir"])
    assert (shown["steps"], shown["last_step"], shown["tokens"]) == (
        241,
        240,
        iterations * tokens_per_iter,
    )
    assert shown["throughput"]["steps_per_s"] == pytest.approx(
        tokens_rate / tokens_per_iter, rel=0.1
    )
    assert shown["loss"]["final"] == losses[240]
    assert shown["eval"]["val/loss"] == summary["eval"]["val/loss"]


@pytest.mark.slow
def test_huggingface_run_glue_with_its_defaults_resumed_evaluated_and_plotted(
    tmp_path: Path,
) -> None:
    """`--report_to traintel` after `import traintel`; the Trainer's defaults (a loss every 500
    steps, a checkpoint every 500 steps and at the end); evaluate() and predict() after
    training in the same run; the job started again resumes from the last checkpoint and
    continues the run."""
    arguments = [
        "--output_dir",
        str(tmp_path / "out"),
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--report_to",
        "traintel",
        "--use_cpu",
        "--disable_tqdm",
        "true",
    ]
    (first,) = run(tmp_path, "run_glue.py", *arguments, "--max_steps", "600")
    (second,) = run(tmp_path, "run_glue.py", *arguments, "--max_steps", "1100")
    assert second["resumed_from"].endswith("checkpoint-600")
    (run_dir,) = (tmp_path / "runs").iterdir()  # one run: the resumed job continued it
    summary, lines = summary_of(run_dir), read_lines(run_dir)
    assert [(s["status"], s["steps"]) for s in summary["segments"]] == [
        ("finished", 600),
        ("finished", 500),
    ]
    assert (summary["steps"], summary["last_step"], summary["samples"]) == (1100, 1100, 8800)
    logged = {h["step"]: h["loss"] for h in second["log_history"] if "loss" in h}
    assert (
        {s["step"]: s["metrics"]["loss"] for s in lines.of("step") if "loss" in s["metrics"]}
        == logged
        == {500: logged[500], 1000: logged[1000]}
    )
    assert (summary["loss"]["final"], summary["loss"]["count"]) == (logged[1000], 2)
    evals = {
        (e["step"], name): value for e in lines.of("eval") for name, value in e["metrics"].items()
    }
    for step, figures in ((600, first), (1100, second)):
        for name in ("eval_loss", "eval_accuracy", "predict_loss", "predict_accuracy"):
            metrics = figures["eval" if name.startswith("eval") else "predict"]
            assert evals[(step, name)] == metrics[name]
    assert summary["eval"]["eval_loss"]["best"] == min(
        first["eval"]["eval_loss"], second["eval"]["eval_loss"]
    )
    trainer_rate = (
        (600 + 500) * 8 / (first["train"]["train_runtime"] + second["train"]["train_runtime"])
    )
    assert summary["throughput"]["samples_per_s"] == pytest.approx(trainer_rate, rel=0.1)

    # the loss logged every 500 steps still plots: two points, drawn with markers
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintel.cli",
            "logs",
            "report",
            str(run_dir),
            "--plot",
            "--output",
            str(tmp_path / "report.md"),
        ],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (plot,) = tmp_path.glob("*loss.png")
    assert plot.stat().st_size > 0
    series = Series()
    summarize(Records(run_dir), series)
    assert series.loss == [(500, logged[500]), (1000, logged[1000])]


@pytest.mark.parametrize("strategy", ["epoch", "steps"])
def test_autotrain_text_classification_stopped_early(tmp_path: Path, strategy: str) -> None:
    """AutoTrain's text classifier as its users run it (a training_config.json, `log` its
    report_to): EarlyStoppingCallback stops the run past its best evaluation, with
    load_best_model_at_end, and the model card's evaluate() scores the model after training.
    Its default evaluates and saves every epoch: the best checkpoint is reloaded and the stop
    falls on an epoch's end. Its "steps" choice evaluates every logging step (10) and saves
    every 500 steps: the stop cuts an epoch, and no checkpoint of the best exists, so the Trainer
    keeps the last model. The record says each as the Trainer does: its log_history step for
    step, the stop with what it watched, the final evaluation tagged with the step of the model
    it scored where that model was reloaded, the epoch as trainer.state.epoch."""
    config = {
        "data_path": "project/autotrain-data",
        "model": "base-model",  # make_local_inputs writes a tiny BERT there
        "project_name": "project",
        "train_split": "train",
        "valid_split": "validation",
        "text_column": "autotrain_text",
        "target_column": "autotrain_label",
        "lr": 2e-3,
        "epochs": 20,
        "max_seq_length": 16,
        "early_stopping_patience": 2,
        "log": "traintel",
        "eval_strategy": strategy,
        # autotrain's default (-1) logs every int(0.2 * 48 / 8) = 1 step
        "logging_steps": -1 if strategy == "epoch" else 10,
    }  # the rest are autotrain's defaults: batch 8, warmup 0.1, threshold 0.01
    (tmp_path / "training_config.json").write_text(json.dumps(config))
    (hf,) = run(tmp_path, "autotrain_text_classification.py", "--training_config",
                "training_config.json")  # fmt: skip
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary, lines = summary_of(run_dir), read_lines(run_dir)
    history, stop, best = hf["log_history"], hf["global_step"], hf["best_global_step"]
    every = 16 if strategy == "epoch" else 10  # 128 samples in batches of 8: 16 steps an epoch
    # the script's own story: stopped by the callback, before its 20 epochs, past its best
    assert hf["should_training_stop"] and best < stop < hf["max_steps"] == 20 * 16

    # every step the Trainer logged, as it did, and a step line for every step
    logged = {h["step"]: (h["loss"], h["learning_rate"], h["grad_norm"]) for h in history
              if "loss" in h}  # fmt: skip
    steps = lines.of("step")
    assert {s["step"]: (s["metrics"]["loss"], s["metrics"]["lr"], s["metrics"]["grad_norm"])
            for s in steps if "loss" in s["metrics"]} == logged  # fmt: skip
    assert sorted(logged) == list(range(every if strategy == "steps" else 1, stop + 1,
                                        every if strategy == "steps" else 1))  # fmt: skip
    assert [s["step"] for s in steps] == list(range(1, stop + 1))
    assert (summary["status"], summary["steps"], summary["last_step"]) == ("finished", stop, stop)
    assert summary["samples"] == 8 * stop
    assert (summary["loss"]["final"], summary["loss"]["count"]) == (logged[stop][0], len(logged))
    (closing,) = [h for h in history if "train_loss" in h]
    (told,) = lines.of("event", "trainer_summary")
    assert told["fields"]["train_loss"] == closing["train_loss"]

    # every evaluation at its step with the Trainer's figures (runtimes left out)
    def figures(h: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in h.items() if k.startswith("eval_") and "_per_second" not in k
                and k != "eval_runtime"}  # fmt: skip

    evaluated = [h for h in history if "eval_loss" in h]
    evals = lines.of("eval")
    assert [(e["step"], e["metrics"]) for e in evals] == [
        (h["step"], figures(h)) for h in evaluated
    ]
    assert [h["step"] for h in evaluated[:-1]] == list(range(every, stop + 1, every))
    assert summary["eval"]["eval_loss"]["best"] == hf["best_metric"]
    assert summary["eval"]["eval_loss"]["best_step"] == best

    # the stop: an event with what the callback watched, its patience and the best step, and
    # summary.json says why a finished run ended short of its planned steps
    (stopped,) = lines.of("event", "early_stopping")
    assert stopped["step"] == stop
    assert stopped["fields"] == {
        "planned_steps": hf["max_steps"],
        "metric": "eval_loss",  # HF's metric_for_best_model "loss", read as eval_loss
        "best_metric": hf["best_metric"],
        "best_step": best,  # also where no checkpoint of it was saved
        "patience": hf["early_stopping_patience"],
    }
    assert hf["early_stopping_patience"] == 2
    assert hf["metric_for_best_model"] == "loss" and "eval_loss" in evals[0]["metrics"]
    assert summary["summary"]["stopped_by"] == "early_stopping"
    assert [(s["status"], s["steps"]) for s in summary["segments"]] == [("finished", stop)]

    # the model card's evaluate() after train(), at the step the run stopped at
    final = evaluated[-1]
    assert final["step"] == stop and evals[-1]["metrics"] == figures(final)
    if strategy == "epoch":
        # of the best checkpoint, reloaded: tagged with its step just before its eval line
        (tagged,) = lines.of("event", "best_model_evaluated")
        assert (tagged["step"], tagged["fields"]) == (
            stop,
            {"model_step": best, "checkpoint": hf["best_model_checkpoint"]},
        )
        assert hf["best_model_checkpoint"].endswith(f"checkpoint-{best}")
        assert final["eval_loss"] == hf["best_metric"]  # the same model, scored again
        kinds = [line.get("event", line["type"]) for line in lines]
        assert kinds[kinds.index("best_model_evaluated") :].count("eval") == 1
    else:
        # no checkpoint before step 500: nothing reloaded, the last model scored, no tag
        assert hf["best_model_checkpoint"] is None and not lines.of("event", "best_model_evaluated")
        assert final["eval_loss"] == evaluated[-2]["eval_loss"] != hf["best_metric"]

    # epochs as HF counts them: trainer.state.epoch; the epochs that ended, and the one the stop
    # cut (per-epoch evaluation stops at an epoch's end: none is cut)
    assert summary["summary"]["epoch"] == hf["epoch"] == history[-1]["epoch"] == stop / 16
    ended = int(hf["epoch"])
    assert summary["epochs"] == ended
    cut = [True] if hf["epoch"] > ended else []
    assert [line["cut"] for line in lines.of("epoch")] == [False] * ended + cut
    assert bool(cut) == (strategy == "steps")


def test_accelerate_tracking_example(tmp_path: Path) -> None:
    (measured,) = run(tmp_path, "accelerate_tracking.py", "--cpu", "--with_tracking")
    logged = measured["logged"]
    summary, lines = summary_of(measured["run_dir"]), read_lines(Path(measured["run_dir"]))
    # the example logs once per epoch with step=epoch: three points on its step axis
    assert (summary["status"], summary["steps"], summary["last_step"]) == ("finished", 3, 2)
    assert [s["metrics"] for s in lines.of("step")] == [{"loss": e["train_loss"]} for e in logged]
    assert [e["metrics"] for e in lines.of("eval")] == [
        {"accuracy": e["accuracy"], "f1": e["f1"]} for e in logged
    ]
    assert summary["eval"]["f1"]["best"] == max(e["f1"] for e in logged)
    times = measured["log_times"]
    assert summary["throughput"]["steps_per_s"] == pytest.approx(
        (len(times) - 1) / (times[-1] - times[0]), rel=0.1
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_transformers_run_glue_no_trainer_with_accelerates_trackers(
    tmp_path: Path, processes: int
) -> None:
    """transformers' run_glue_no_trainer.py with --with_tracking, traintel's tracker beside
    Accelerate's TensorBoard one: its one accelerator.log per epoch carries the metric as a dict
    ({"glue": {"accuracy": ...}}), the epoch's mean train_loss, the epoch and completed_steps.
    With gradient accumulation as the script counts it (17 optimizer steps an epoch of 32
    batches on one process, 9 of 16 on each of two, training cut at max_train_steps inside the
    fourth epoch), the record has the script's steps, epochs, losses and evaluations, and the
    same figures at the same steps as TensorBoard's event files. On two processes (torchrun,
    gloo: what `accelerate launch` starts on CPUs) the main process alone records."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Accelerate 1.x's end_training destroys the process group, and the published script then
    # waits for everyone before saving to --output_dir: on two processes it runs without one
    # (and so without TensorBoard, which writes there)
    board = ("--report_to", "tensorboard", "--output_dir", str(tmp_path / "out"))
    printed = run(
        tmp_path,
        "run_glue_no_trainer.py",
        "--with_tracking",
        *(board if processes == 1 else ()),
        "--seed",
        "42",
        "--learning_rate",
        "3e-3",
        "--num_train_epochs",
        "4",
        "--gradient_accumulation_steps",
        "2",
        launcher=TORCHRUN[:-1] + (f"--nproc_per_node={processes}",) if processes > 1 else (),
    )
    assert sorted(m["process_index"] for m in printed) == list(range(processes))
    (measured,) = [m for m in printed if m["run_dir"] is not None]
    assert measured["process_index"] == 0
    assert len(list((tmp_path / "runs").glob("**/events.jsonl"))) == 1
    per_epoch = {1: 17, 2: 9}[processes]
    logged, steps = measured["logged"], measured["completed_steps"]
    assert (steps, measured["epochs_run"], len(logged)) == (measured["max_train_steps"], 4, 4)
    # the script's own count: per_epoch steps an epoch, the last cut at max_train_steps
    assert [e["step"] for e in logged] == [per_epoch, 2 * per_epoch, 3 * per_epoch, steps]
    summary, lines = summary_of(measured["run_dir"]), read_lines(Path(measured["run_dir"]))
    assert (summary["status"], summary["steps"], summary["last_step"]) == ("finished", steps, steps)
    # the epochs it ran, each with the optimizer steps it took (the last one cut by
    # max_train_steps, as the script's loop breaks: still an epoch the script ended)
    assert [(e["epoch"], e["steps"], e["cut"]) for e in lines.of("epoch")] == [
        (0, per_epoch, False),
        (1, per_epoch, False),
        (2, per_epoch, False),
        (3, steps - 3 * per_epoch, False),
    ]
    assert (summary["epochs"], summary["epoch"]) == (measured["epochs_run"], 3)
    # the epoch's mean train_loss is the loop's only loss: the loss curve, at the epoch's end
    # (docs/accelerate.md), as TensorBoard draws it; the metric an evaluation at the same step
    assert [(s["step"], s["metrics"]) for s in lines.of("step")] == [
        (e["step"], {"loss": e["train_loss"]}) for e in logged
    ]
    assert [(e["step"], e["metrics"]) for e in lines.of("eval")] == [
        (e["step"], {"glue/accuracy": e["glue"]["accuracy"]}) for e in logged
    ]
    assert lines.of("values") == []
    assert lines.of("config")[0]["config"] == measured["config"]  # init_trackers' vars(args)
    times = measured["log_times"]  # the steps between the first and the last call, over time
    assert summary["throughput"]["steps_per_s"] == pytest.approx(
        (steps - logged[0]["step"]) / (times[-1] - times[0]), rel=0.1
    )
    assert summary["loss"]["final"] == summary["metrics"]["loss"] == logged[-1]["train_loss"]
    assert summary["loss"]["count"] == 4
    accuracy = [e["glue"]["accuracy"] for e in logged]
    best = summary["eval"]["glue/accuracy"]
    assert (best["best"], best["best_step"]) == (
        max(accuracy),
        logged[accuracy.index(max(accuracy))]["step"],
    )
    assert len(set(accuracy)) > 1  # it learned: the best is not the first by default
    if processes > 1:
        return
    # Accelerate's own TensorBoard tracker, from the same calls (float32 in event files)
    events = tmp_path / "out" / "glue_no_trainer"
    scalars = EventAccumulator(str(events)).Reload()
    metric = EventAccumulator(str(events / "glue_accuracy")).Reload()
    assert [(e.step, e.value) for e in scalars.Scalars("train_loss")] == [
        (s["step"], pytest.approx(s["metrics"]["loss"], rel=1e-6)) for s in lines.of("step")
    ]
    assert [(e.step, e.value) for e in metric.Scalars("glue")] == [
        (e["step"], pytest.approx(e["metrics"]["glue/accuracy"], rel=1e-6))
        for e in lines.of("eval")
    ]


@pytest.mark.parametrize("integration", ["logger", "callback"])
def test_lightning_readme_autoencoder(tmp_path: Path, integration: str) -> None:
    """Validation, a StepLR scheduler, accumulate_grad_batches=2 and the default
    log_every_n_steps (50): 640 samples in batches of 8 are 40 optimizer steps an epoch."""
    (measured,) = run(tmp_path, "lightning_autoencoder.py", "--traintel", integration)
    summary, lines = summary_of(measured["run_dir"]), read_lines(Path(measured["run_dir"]))
    computed, steps = measured["train"], lines.of("step")
    assert (
        (summary["status"], summary["steps"])
        == ("finished", measured["global_step"])
        == ("finished", 80)
    )
    assert all(s["metrics"]["samples"] == 16 for s in steps)
    assert [s["metrics"]["lr"] for s in steps] == [1e-3] * 40 + [5e-4] * 40  # as each step used
    if integration == "callback":  # the loss training_step returned, unscaled, every step
        assert [s["metrics"]["loss"] for s in steps] == [
            (computed[i] + computed[i + 1]) / 2 for i in range(0, 160, 2)
        ]
    else:  # what the module logged, every log_every_n_steps: the step's last micro-batch
        assert {s["step"]: s["metrics"]["loss"] for s in steps if "loss" in s["metrics"]} == {
            50: pytest.approx(computed[99])
        }
        checkpoint = lines.of("event", "checkpoint")[-1]["fields"]["path"]
        assert Path(checkpoint).parent.parent.name == Path(measured["run_dir"]).name
    val = {}
    for step, loss in measured["val"]:
        val.setdefault(step, []).append(loss)
    assert {e["step"]: e["metrics"]["val_loss"] for e in lines.of("eval")} == {
        step: pytest.approx(sum(v) / len(v)) for step, v in val.items()
    }


@pytest.mark.slow
def test_pytorch_ddp_tutorial_under_torchrun(tmp_path: Path) -> None:
    """torchrun --standalone --nproc_per_node 2 (gloo): the documented run id form on both
    ranks (torchrun's made-up UUID is not it), each rank's steps, and the job's throughput
    summed over the ranks in summary.json and the command line."""
    measured = run(
        tmp_path,
        "ddp_torchrun.py",
        "3",
        "1",
        "--snapshot_path",
        str(tmp_path / "snapshot.pt"),
        launcher=(
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
        ),
        timeout=300,
    )
    ranks = {m["rank"]: m for m in measured}
    assert sorted(ranks) == [0, 1]
    (run_id,) = {m["run_id"] for m in measured}
    assert RUN_ID_FORM.fullmatch(run_id)
    rates = {}
    for rank, m in ranks.items():
        summary = summary_of(m["run_dir"])
        assert (summary["status"], summary["steps"], summary["samples"]) == (
            "finished",
            m["batches"],
            m["samples"],
        )
        assert summary["loss"]["final"] == m["losses"][-1]
        rates[rank] = (m["samples"] - m["first_batch_samples"]) / (
            m["last_batch_end"] - m["first_batch_end"]
        )
        assert summary["throughput"]["samples_per_s"] == pytest.approx(rates[rank], rel=0.1)
    job = summary_of(tmp_path / "runs" / run_id)
    assert (job["ranks"], job["complete"], job["status"]) == ([0, 1], True, "finished")
    assert job["samples"] == sum(m["samples"] for m in measured)
    assert job["throughput"]["samples_per_s"] == pytest.approx(sum(rates.values()), rel=0.1)
    shown = cli(tmp_path, "logs", "summary", str(tmp_path / "runs" / run_id))
    assert shown["throughput"]["samples_per_s"] == pytest.approx(
        job["throughput"]["samples_per_s"], rel=0.01
    )
    assert set(shown["throughput_by_rank"]) == {"0", "1"}


def failing_rank_job(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The DDP tutorial under torchrun with one bad record (--corrupt_sample): the sample, the
    rank and batch PyTorch's DistributedSampler gives it to (epoch 0, the tutorial's default
    shuffle), torchrun's exit status and its report, parsed: {rank: (exit code, exception)},
    the root cause's rank first."""
    import torch.utils.data  # the sampler the script uses, to know where the bad record goes

    rank, batch, batch_size = 1, 8, 32
    order = list(torch.utils.data.DistributedSampler(range(2048), num_replicas=2, rank=rank))
    sample = order[batch * batch_size]  # the first record of rank 1's ninth batch
    done = subprocess.run(
        [
            *TORCHRUN,
            str(CORPUS / "ddp_torchrun.py"),
            "3",
            "1",
            "--snapshot_path",
            str(tmp_path / "snapshot.pt"),
            "--corrupt_sample",
            str(sample),
        ],
        cwd=tmp_path,
        env={**environment(tmp_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # torchrun's ChildFailedError: "Failures:" then "Root Cause (first observed failure):", each
    # entry a "rank : N (local_rank: N)", an "exitcode : C ..." and the traceback that @record
    # wrote, whose last line is the exception
    report = done.stderr[done.stderr.rindex("Failures:") :]
    failures, root = report.split("Root Cause (first observed failure):")
    entries = {}
    for entry in re.split(r"\n\[\d+\]:\n", failures + root)[1:]:
        found = re.search(r"rank\s+: (\d+) \(local_rank", entry)
        code = re.search(r"exitcode\s+: (-?\d+)", entry)
        assert found and code, entry
        exception = [line.strip() for line in entry.splitlines() if line.strip(" =-")][-1]
        entries[int(found[1])] = (int(code[1]), exception)
    (root_rank,) = {int(r) for r in re.findall(r"rank\s+: (\d+) \(local_rank", root)}
    return {
        "returncode": done.returncode,
        "rank": rank,
        "batch": batch,
        "torchrun": entries,
        "torchrun_root": root_rank,
        "job": next((tmp_path / "runs").iterdir()),
        "stderr": done.stderr,
    }


@pytest.mark.slow
def test_pytorch_ddp_tutorial_one_rank_fails_and_the_root_cause_is_torchruns(
    tmp_path: Path,
) -> None:
    """Rank 1 meets a bad record (a data error in default_collate), its peer's allreduce fails
    when rank 1's process goes away (gloo: "Connection closed by peer"), then torchrun's elastic
    agent stops it with SIGTERM. Each rank's record keeps the error that rank raised; the job's
    summary.json and `traintel logs summary` name as root cause the rank and exception that
    torchrun's own "Root Cause" names."""
    job = failing_rank_job(tmp_path)
    assert job["returncode"] == 1, job["stderr"][-3000:]
    assert job["torchrun_root"] == job["rank"] == 1
    ranks = {rank: summary_of(job["job"] / f"rank-{rank}") for rank in (0, 1)}
    errors = {rank: read_lines(job["job"] / f"rank-{rank}").of("error") for rank in (0, 1)}
    # rank 1: failed with the data error, after the batches before the bad one
    failing, (error,) = ranks[1], errors[1]
    code, exception = job["torchrun"][1]
    assert code == 1 and exception.startswith("RuntimeError: stack expects each tensor")
    assert (failing["status"], failing["steps"]) == ("failed", job["batch"])
    assert f"{error['exc_type']}: {error['message']}" == exception
    assert (error["error_type"], error["step"]) == ("data", job["batch"])
    assert failing["errors"]["first"] == {
        "ts": error["ts"],
        "error_type": "data",
        "exc_type": "RuntimeError",
        "step": job["batch"],
    }
    # rank 0: what torchrun reports of it (its error file, then SIGTERM: exit code -15) is what
    # its record says: it failed in the collective the lost peer left hanging
    code, exception = job["torchrun"][0]
    (peer_error,) = errors[0]
    assert code == -15 and "Connection closed by peer" in exception
    assert ranks[0]["status"] == "failed"
    assert f"{peer_error['exc_type']}: {peer_error['message']}" == exception
    assert peer_error["error_type"] == "distributed" and peer_error["ts"] > error["ts"]
    # the job: rank 1 is the root cause, in summary.json and in logs summary, text and JSON
    summary = summary_of(job["job"])
    assert (summary["status"], summary["errors"]) == ("failed", 2)
    assert summary["root_cause"] == {"rank": 1, **failing["errors"]["first"]}
    shown = cli(tmp_path, "logs", "summary", str(job["job"]))
    assert shown["root_cause"] == summary["root_cause"]
    text = subprocess.run(
        [sys.executable, "-m", "traintel.cli", "logs", "summary", str(job["job"])],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert re.search(rf"root cause\s+rank 1: data \(RuntimeError\) at step {job['batch']}", text)
    # `traintel logs errors` of the job names the rank of each error, rank 0 too
    listed = subprocess.run(
        [sys.executable, "-m", "traintel.cli", "logs", "errors", str(job["job"])],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert re.findall(r"ERROR\s+(rank \d+ error: \w+)", listed) == [
        "rank 1 error: data",
        "rank 0 error: distributed",
    ]


@pytest.mark.slow
@pytest.mark.stack
def test_pytorch_ddp_one_rank_fails_through_the_stack_runfailed_names_the_root_cause(
    stack, tmp_path: Path
) -> None:
    """The same job exporting to the real collector and Prometheus with the repository's rules:
    each rank's traintel_first_error_timestamp_seconds is the time of the error its record
    kept, and RunFailed fires for both ranks, each naming rank 1, torchrun's root cause."""
    job = failing_rank_job(
        tmp_path,
        {
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        },
    )
    assert job["returncode"] == 1 and job["torchrun_root"] == 1, job["stderr"][-3000:]
    run_id, project = job["job"].name, "ddp-tutorial"
    kept = {
        rank: summary_of(job["job"] / f"rank-{rank}")["errors"]["first"]["ts"] for rank in (0, 1)
    }

    def both_ranks() -> list[dict[str, Any]] | None:
        series = promql(
            stack, f'traintel_first_error_timestamp_seconds{{project="{project}",run="{run_id}"}}'
        )
        return series if len(series) == 2 else None

    exported = eventually(both_ranks, 60, what="the first-error gauge of both ranks")
    assert {int(s["metric"]["rank"]): float(s["value"][1]) for s in exported} == {
        rank: pytest.approx(ts, abs=1e-3) for rank, ts in kept.items()
    }

    def fired() -> list[dict[str, Any]] | None:
        alerts = requests.get(f"{stack.endpoints['prometheus']}/api/v1/alerts", timeout=5).json()
        found = [
            a
            for a in alerts["data"]["alerts"]
            if a["labels"]["alertname"] == "RunFailed" and a["labels"].get("run") == run_id
        ]
        return found if len(found) == 2 else None

    alerts = eventually(fired, 90, 2, what="RunFailed for both ranks")  # rules run every 15 s
    assert sorted(a["labels"]["rank"] for a in alerts) == ["0", "1"]
    for alert in alerts:
        assert alert["annotations"]["description"].endswith(
            "The job's first failure (root cause): rank 1."
        ), alert


def test_pytorch_examples_imagenet_preempted_and_requeued(tmp_path: Path) -> None:
    """SIGTERM during epoch 1: the script ends the epoch, writes its checkpoint and exits 0; the
    requeued job starts with --resume and continues the same run to the end: two segments, every
    step once, the epochs and the script's per-epoch training averages across the requeue."""
    script = [sys.executable, "-u", str(CORPUS / "imagenet_preemptible.py")]
    first = subprocess.Popen(
        script,
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    output = []
    for line in first.stdout:  # type: ignore[union-attr]
        output.append(line)
        if line.startswith("Epoch: [1]") and len([o for o in output if "Epoch: [1]" in o]) == 1:
            first.send_signal(signal.SIGTERM)  # once, as a scheduler does
    assert first.wait(timeout=120) == 0
    stopped = json.loads(output[-1])
    assert stopped["stopped_after_epoch"] == 1
    preempted = summary_of(stopped["run_dir"])
    assert (preempted["status"], preempted["steps"]) == ("preempted", 40)  # every step recorded
    (second,) = run(tmp_path, "imagenet_preemptible.py", "--resume", "checkpoint.pth.tar")
    summary, lines = summary_of(second["run_dir"]), read_lines(Path(second["run_dir"]))
    assert [(s["segment"], s["resumed"]) for s in lines.of("run_start")] == [(1, False), (2, True)]
    assert [e["status"] for e in lines.of("run_end")] == ["preempted", "finished"]
    assert [
        (s["segment"], s["status"], s["steps"], s["last_step"]) for s in summary["segments"]
    ] == [(1, "preempted", 40, 40), (2, "finished", 40, 80)]
    assert summary["duration_s"] == pytest.approx(sum(s["duration_s"] for s in summary["segments"]))
    assert (summary["status"], summary["steps"], summary["last_step"]) == ("finished", 80, 80)
    (sigterm,) = lines.of("event", "signal")
    assert sigterm["fields"] == {"signal": "SIGTERM", "decided_by": "loop"}
    assert [s["step"] for s in lines.of("step")] == list(range(1, 81))
    losses = {**by_step(stopped["losses"]), **by_step(second["losses"])}
    assert {s["step"]: s["metrics"]["loss"] for s in lines.of("step")} == losses
    assert summary["loss"]["best"] == min(losses.values())
    assert summary["loss"]["count"] == 80  # the loss figures cover both segments
    # the epochs, numbered by the script from 0, and each epoch's training averages as a values
    # line (no step), across the requeue
    assert [(e["epoch"], e["steps"]) for e in lines.of("epoch")] == [
        (0, 20),
        (1, 20),
        (2, 20),
        (3, 20),
    ]
    train = {**by_step(stopped["train"]), **by_step(second["train"])}
    assert [(v["epoch"], v["metrics"]) for v in lines.of("values")] == sorted(train.items())
    acc1 = {**by_step(stopped["acc1"]), **by_step(second["acc1"])}
    assert {e["step"]: e["metrics"]["acc1"] for e in lines.of("eval")} == acc1
    assert summary["eval"]["acc1"]["best"] == second["best_acc1"] == max(acc1.values())
    assert summary["errors"]["total"] == 0


def recorded_steps(run_dir: Path) -> list[int]:
    """The step lines the record holds on disk now (written every flush_interval, 1 s)."""
    record = run_dir / "events.jsonl"
    if not record.exists():
        return []
    return [
        line["step"]
        for text in record.read_text().splitlines()
        if text.endswith("}") and (line := json.loads(text))["type"] == "step"
    ]


def test_pytorch_examples_imagenet_killed_and_resumed_from_an_older_checkpoint(
    tmp_path: Path,
) -> None:
    """kill -9 once the record holds step 200 of 800, then the job resumes from an older
    checkpoint: the test set aside the one written when epoch 1 began (the script overwrites
    checkpoint.pth.tar every epoch; a user keeps an older one when the latest is suspect). The
    record's steps after it are superseded (a `superseded` event, their lines kept) and the
    summary counts each of the 800 steps once: its samples, epochs, losses (their extremes and
    final too) and evaluations (the best is the script's own best_acc1); `traintel logs
    summary` agrees, the killed segment `crashed` in both, the same duration."""
    script = [sys.executable, "-u", str(CORPUS / "imagenet_preemptible.py"), "--epochs", "40"]
    first = subprocess.Popen(
        script,
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    run_dir = tmp_path / "runs" / "imagenet-job"
    for line in first.stdout:  # type: ignore[union-attr]
        if line.startswith("Epoch: [1][ 1/20]"):  # a checkpoint is written: set it aside
            (tmp_path / "checkpoint.pth.tar").rename(tmp_path / "older.pth.tar")
        if (tmp_path / "older.pth.tar").exists() and max(recorded_steps(run_dir), default=0) >= 200:
            first.kill()  # SIGKILL: no handler, no finish; the record holds its last flush
            break
    assert first.wait(timeout=120) == -signal.SIGKILL
    killed = read_lines(run_dir).of("step")
    recorded = [s["step"] for s in killed]
    assert recorded == list(range(1, len(recorded) + 1)) and 200 <= recorded[-1] < 800
    (second,) = run(
        tmp_path, "imagenet_preemptible.py", "--epochs", "40", "--resume", "older.pth.tar"
    )
    assert Path(second["run_dir"]) == run_dir  # the same job: the same run, resumed
    # where the older checkpoint goes on from: epoch 1's start, later if the test read late
    after = min(by_step(second["losses"])) - 1
    assert after % 20 == 0 and 20 <= after < recorded[-1]
    summary, lines = summary_of(run_dir), read_lines(run_dir)
    assert [(s["segment"], s["resumed"]) for s in lines.of("run_start")] == [(1, False), (2, True)]
    (superseded,) = lines.of("event", "superseded")
    assert (superseded["fields"]["after_step"], superseded["fields"]["through_step"]) == (
        after,
        recorded[-1],
    )
    # every line stays in the record: the killed segment's steps, then the resumed one's
    assert [s["step"] for s in lines.of("step")] == recorded + list(range(after + 1, 801))
    assert (summary["status"], summary["steps"], summary["last_step"]) == ("finished", 800, 800)
    assert summary["samples"] == 800 * 32
    # the losses that count: the killed segment's up to the checkpoint, then the resumed job's
    losses = {s["step"]: s["metrics"]["loss"] for s in killed if s["step"] <= after}
    losses.update(by_step(second["losses"]))
    assert sorted(losses) == list(range(1, 801))
    assert summary["loss"]["count"] == 800
    assert summary["loss"]["final"] == summary["loss"]["last_finite"] == losses[800]
    assert summary["loss"]["mean"] == pytest.approx(statistics.fmean(losses.values()))
    assert summary["loss"]["std"] == pytest.approx(statistics.pstdev(losses.values()))
    # the extremes too: the superseded lines' losses do not count
    assert summary["loss"]["best"] == summary["loss"]["min"] == min(losses.values())
    assert summary["loss"]["max"] == max(losses.values())
    assert summary["superseded"] == recorded[-1] - after
    # evaluations: the killed segment's after the checkpoint do not count; the best is the
    # script's own best_acc1 (the older checkpoint's, then the resumed job's)
    restart = next(
        i for i, line in enumerate(lines) if line["type"] == "run_start" and line["segment"] == 2
    )
    killed_acc1 = {e["step"]: e["metrics"]["acc1"] for e in lines[:restart] if e["type"] == "eval"}
    assert max(killed_acc1) > after  # the killed segment evaluated after the checkpoint
    kept = {s: v for s, v in killed_acc1.items() if s <= after} | by_step(second["acc1"])
    best_step = max(kept, key=lambda s: (kept[s], -s))
    assert summary["eval"]["acc1"] == {
        "last": kept[800],
        "best": second["best_acc1"],
        "best_step": best_step,
        "mode": "max",
    }
    assert kept[best_step] == second["best_acc1"]
    assert [(s["segment"], s["status"]) for s in summary["segments"]] == [
        (1, "crashed"),
        (2, "finished"),
    ]
    assert summary["errors"]["total"] == 0
    # each epoch once: those the killed segment ended after the checkpoint are taken back (51
    # were counted before: the killed segment's 12 and the resumed job's 39)
    assert summary["epochs"] == 40

    shown = cli(tmp_path, "logs", "summary", str(run_dir))
    assert (shown["steps"], shown["last_step"], shown["samples"]) == (800, 800, 800 * 32)
    assert shown["epochs"] == 40
    assert shown["loss"] == summary["loss"]
    assert (shown["superseded"], shown["eval"]) == (summary["superseded"], summary["eval"])
    assert [(s["segment"], s["status"]) for s in shown["segments"]] == [
        (1, "crashed"),
        (2, "finished"),
    ]
    assert shown["duration_s"] == pytest.approx(summary["duration_s"], abs=0.05)


def test_convnext_ported_from_wandb(tmp_path: Path) -> None:
    """ConvNeXt's W&B-instrumented script, ported by docs/coming-from-wandb.md alone: the record
    holds every value the script logged, on the step it logged it for, and nothing more."""
    (measured,) = run(tmp_path, "convnext_wandb.py")
    run_dir = Path(measured["run_dir"])
    summary, lines = summary_of(run_dir), read_lines(run_dir)
    logged = by_step(measured["logged"])
    iterations = measured["iterations"]
    # one step per iteration, numbered by the loop's counter: the epochs' commits make none
    assert sorted(logged) == list(range(iterations)) == [s["step"] for s in lines.of("step")]
    assert (summary["status"], summary["steps"], summary["last_step"]) == (
        "finished",
        iterations,
        iterations - 1,
    )
    # each batch's commit=False values joined the step their commit named, and say so
    steps = lines.of("step")
    assert {s["step"]: s["metrics"] for s in steps} == logged
    assert {s["step"]: s["uncommitted"] for s in steps} == by_step(measured["uncommitted"])
    assert not [v for v in lines.of("values") if "uncommitted" in v]
    # the loss by its declared name
    losses = {step: values["Rank-0_Batch_Wise/train_loss"] for step, values in logged.items()}
    assert summary["loss"]["key"] == "Rank-0_Batch_Wise/train_loss"
    assert (summary["loss"]["final"], summary["loss"]["best"]) == (
        losses[iterations - 1],
        min(losses.values()),
    )
    assert summary["loss"]["count"] == iterations
    # each epoch's figures at the epoch's last step: training ones as values, tests as an eval
    epochs = measured["epochs"]
    values: dict[int, dict[str, Any]] = {}
    for line in lines.of("values"):
        values.setdefault(line["step"], {}).update(line["metrics"])
    assert values == {
        e["step"]: {
            "epoch": e["epoch"],
            **{f"Global_Train/{k}": v for k, v in e.items() if k.startswith("train_")},
        }
        for e in epochs
    }
    tests = {
        e["step"]: {f"Global_Test/{k}": v for k, v in e.items() if "test" in k} for e in epochs
    }
    assert {e["step"]: e["metrics"] for e in lines.of("eval")} == tests
    acc1 = {step: t["Global_Test/test_acc1"] for step, t in tests.items()}
    assert summary["eval"]["Global_Test/test_acc1"]["mode"] == "max"
    assert summary["eval"]["Global_Test/test_acc1"]["best"] == measured["max_accuracy"]
    assert summary["eval"]["Global_Test/test_acc1"]["best_step"] == max(acc1, key=acc1.get)
    test_loss = {step: t["Global_Test/test_loss"] for step, t in tests.items()}
    assert summary["eval"]["Global_Test/test_loss"]["mode"] == "min"
    assert summary["eval"]["Global_Test/test_loss"]["best"] == min(test_loss.values())
    # wandb.summary, config=args
    assert summary["summary"] == {"n_parameters": measured["n_parameters"]}
    (config,) = lines.of("config")
    assert config["config"] == measured["config"]

    shown = cli(tmp_path, "logs", "summary", str(run_dir))
    assert (shown["steps"], shown["last_step"], shown["loss"]) == (
        summary["steps"],
        summary["last_step"],
        summary["loss"],
    )
