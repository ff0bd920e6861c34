"""Sweeps end to end on a tiny model: Ray Tune and Optuna for real, a forced failure, resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raylsl.errors import RaylslError
from tests.conftest import write_task

optuna = pytest.importorskip("optuna")
pytest.importorskip("ray.tune")

SPACE = """\
base: {base}
set: {{data.val_size: 16, data.test_size: 16, train.steps: 3, train.batch_size: 4, ist.interval: 2,
       ist.probe_batch_size: 4, eval_before: false}}
trials: {trials}
points:
  - {{selector: last, n: 9}}          # more blocks than the model has: this trial must fail
parameters:
  selector: {{choices: [all, activation, last, ist]}}
  n: {{low: 1, high: 3}}
  lora.r: {{choices: [2, 4]}}
  ist.mu: {{low: 1.0, high: 100.0, log: true, when: {{selector: ist}}}}
"""


def write_space(root: Path, trials: int) -> Path:
    task = write_task(root / "colours.jsonl")
    base = root / "base.yaml"
    base.write_text(f"model: tiny-llama\ntask: {task}\nlora: {{r: 4}}\n")
    space = root / "space.yaml"
    space.write_text(SPACE.format(base=base, trials=trials))
    return space


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_session):
    from raylsl.sweep.run import sweep

    root = tmp_path_factory.mktemp("sweep")
    report = sweep(write_space(root, trials=5), output_dir=root, name="s", progress=False)
    return report


def test_every_trial_is_recorded_and_the_failure_is_excluded(swept):
    trials = swept.trials
    assert len(trials) == 5 and swept.complete
    failed = trials[trials["status"] == "ERROR"]
    assert len(failed) == 1 and "n=9 exceeds the model's 4 blocks" in failed.iloc[0]["error"]
    done = trials[trials["status"] == "TERMINATED"]
    assert all(math.isfinite(v) for v in done["val_acc"]) and (done["trainable_params"] > 0).all()
    assert failed.index[0] not in swept.pareto_front().index


def test_all_blocks_baseline_is_always_a_trial(swept):
    base = swept.baseline()
    assert len(base) >= 1 and (base["rank"] == 4).any()  # the base config's rank
    assert (base["pct_of_all_blocks"] == 100.0).all()


def test_no_optuna_trial_is_left_running(swept):
    settings = json.loads((swept.run_dir / "sweep.json").read_text())
    assert (swept.run_dir / "optuna.db").is_file()  # the searcher's study, exported after every trial
    study = optuna.load_study(study_name=settings["study_name"], storage=f"sqlite:///{swept.run_dir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 5 and optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.FAIL) == 1


def test_test_accuracy_only_for_front_members(swept):
    front = swept.pareto_front()
    assert len(front) >= 1 and front["test_acc"].notna().all()
    others = swept.trials.drop(front.index)
    assert others["test_acc"].isna().all()
    tested = {p.stem for p in (swept.run_dir / "test").glob("*.json")}
    assert tested == set(front["trial_id"])


def _trial_results(report) -> list[dict]:
    from raylsl.storage import Storage

    return [Storage(c).read_json("results.json") for c in report.trials["checkpoint"] if c]


def test_static_scores_are_computed_once_for_the_sweep(swept):
    assert len(list((swept.run_dir / "scores").glob("*.json"))) == 1
    settings = json.loads((swept.run_dir / "sweep.json").read_text())
    assert [key.split(":")[0] for key in settings["selection"]] == ["activation"]  # the one data-driven selector
    chosen = [r for r in _trial_results(swept) if r["selector"] == "activation"]
    for results in chosen:  # read from what the driver sent: no scoring, no cache lookup in the trial
        assert results["selection_cached"] is True and results["selection_time_s"] == 0.0


def test_report_files_are_written_and_the_plot_is_not_blank(swept):
    import matplotlib.image

    for name in ("pareto.csv", "pareto.md", "pareto.png"):
        assert (swept.run_dir / name).stat().st_size > 0
    pixels = matplotlib.image.imread(swept.run_dir / "pareto.png")
    assert pixels.std() > 0.05  # points, a step line and a legend, not an empty canvas
    md = (swept.run_dir / "pareto.md").read_text()
    assert "| selector | blocks | rank | trainable params | % of all-block LoRA | val acc | test acc" in md
    recommendation = swept.recommend()
    assert md.splitlines()[2] == recommendation["text"]  # the answer to "which blocks?" comes first
    if recommendation["trial_id"] is not None:  # intervals from every trial's per-example validation record
        assert recommendation["n_val"] == 16 and recommendation["val_ci"][0] <= recommendation["val_acc"]
    for results in _trial_results(swept):
        assert len(results["after_per_example"]["acc"]) == 16  # data.val_size
    # TensorBoard for sweeps is Tune's own logger: every finished trial's val_acc is in the events
    # (the failed trial's event file has no val_acc)
    from tests.test_tracking import scalars

    logged = [scalars(e.parent, "ray/tune/val_acc") for e in (swept.run_dir / "tune").rglob("events.out.tfevents*")]
    done = swept.trials[swept.trials["status"] == "TERMINATED"]
    assert sorted(v for points in logged for _, v in points[-1:]) == pytest.approx(sorted(done["val_acc"]))
    from raylsl import report

    again = report.load(swept.run_dir)
    assert again.trials["trial_id"].tolist() == swept.trials["trial_id"].tolist()


def test_report_command_rewrites_the_files_from_tunes_records(swept, capsys):
    from raylsl.cli import main

    (swept.run_dir / "pareto.md").unlink()
    assert main(["report", str(swept.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "5 trials, 1 failed or unfinished" in out and "n=9 exceeds" in out
    assert (swept.run_dir / "pareto.md").read_text().count("\n| ") == len(swept.pareto_front()) + 1


def test_report_reads_no_pickle(swept, tmp_path, capsys):
    """Tune's pickled trial and experiment states (anyone who can write the storage could make
    them run code) replaced by garbage: the report, built from JSON and text, is unchanged."""
    import shutil

    from raylsl import report
    from raylsl.cli import main

    copy = tmp_path / "s"
    shutil.copytree(swept.run_dir, copy)
    settings = json.loads((copy / "sweep.json").read_text())
    (copy / "sweep.json").write_text(json.dumps({**settings, "storage_uri": str(copy), "local_dir": str(copy)}))
    garbage = [p for p in (copy / "tune").rglob("*") if p.suffix == ".pkl" or p.name.startswith(
        ("experiment_state", "search_gen_state"))]
    assert any(p.name == "params.pkl" for p in garbage) and any(p.name.startswith("experiment_state") for p in garbage)
    for path in garbage:
        path.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that would run a command
    reread = report.load(copy)
    same = ["trial", "trial_id", "status", "trainable_params", "val_acc", "params", "error", "curve"]
    assert reread.trials[same].equals(swept.trials[same])
    assert [Path(c).relative_to(copy) for c in reread.trials["checkpoint"] if c] == [
        Path(c).relative_to(swept.run_dir) for c in swept.trials["checkpoint"] if c]
    assert main(["report", str(copy), "--no-test"]) == 0
    out = capsys.readouterr().out
    assert "5 trials, 1 failed or unfinished" in out and "pwned" not in out
    assert out.count("\n| ") == len(swept.pareto_front()) + 1  # the front's table


GENERATIVE_SPACE = """\
base: {base}
set: {{data.val_size: 8, data.test_size: 8, train.steps: 3, train.batch_size: 4, train.checkpoint_every: 2,
       eval_before: false}}
trials: 3
points:
  - {{selector: last, n: 1, lora.r: 4}}
  - {{selector: all, lora.r: 100000000}}   # 10^8-rank adapters: refused by the fit check, never run
parameters:
  selector: {{choices: [all, last]}}
  n: {{low: 1, high: 3}}
  lora.r: {{choices: [4, 100000000]}}
"""


def test_a_generative_sweep_minimises_held_out_loss_and_shows_each_trials_step(tmp_path, ray_session, capfd):
    """Completion rows without reference answers: the sweep ranks by validation loss, minimised by
    Optuna, the front and the report; while it runs, each trial's step is printed. A trial that
    cannot fit is recorded as such without running."""
    from raylsl.sweep.run import sweep

    rows = tmp_path / "gen.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Item {i} is {c}. Warm?", "completion": " yes" if c in "red amber"
                                        else " no"}) + "\n"
                            for i, c in enumerate(["red", "blue", "amber", "teal"] * 12)))
    base = tmp_path / "base.yaml"
    base.write_text(f"model: tiny-llama\ntask: {rows}\nlora: {{r: 4}}\n")
    space = tmp_path / "space.yaml"
    space.write_text(GENERATIVE_SPACE.format(base=base))
    report = sweep(space, output_dir=tmp_path, name="g", progress=True)
    out = capfd.readouterr().out
    assert report.metric == "loss" and report.complete
    done = report.trials[report.trials["status"] == "TERMINATED"]
    assert len(done) == 2 and done["val_loss"].gt(0).all() and "val_acc" not in report.trials
    from raylsl.report import pareto_mask

    expected = done[pareto_mask(done[["val_loss", "trainable_params"]].to_numpy(float), ["min", "min"])]
    assert set(report.pareto_front()["trial_id"]) == set(expected["trial_id"])
    assert report.pareto_front()["test_loss"].notna().all()
    settings = json.loads((report.run_dir / "sweep.json").read_text())
    study = optuna.load_study(study_name=settings["study_name"], storage=f"sqlite:///{report.run_dir / 'optuna.db'}")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    assert "Minimise validation loss" in (report.run_dir / "pareto.md").read_text()
    assert "step 2/3" in out and "step 3/3" in out and "val_loss" in out, out[-3000:]
    refused = report.trials[report.trials["status"] == "INFEASIBLE"]
    assert len(refused) == 1 and json.loads(refused.iloc[0]["params"])["lora.r"] == 100000000
    assert "this run does not fit" in refused.iloc[0]["error"] and refused["checkpoint"].eq("").all()
    assert math.isnan(refused.iloc[0]["train_time_s"])  # refused before anything loaded
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and optuna.trial.TrialState.RUNNING not in states


def test_the_sweep_metric_comes_from_the_task(tmp_path):
    from raylsl.config import load_config
    from raylsl.data import GenExample, MCExample
    from raylsl.errors import ConfigError
    from raylsl.sweep.run import _metric
    from raylsl.sweep.space import load_space

    space_file = tmp_path / "space.yaml"
    space_file.write_text("parameters:\n  lora.r: {choices: [2, 4]}\n")
    auto = load_space(space_file)
    base = load_config(None, {})
    mc = [MCExample("q", ("a", "b"), 0)]
    answered = [GenExample("completion", prompt="2+2=", completion=" 4\n#### 4")]
    plain = [GenExample("completion", prompt="Say hi", completion=" hi")]
    assert _metric(auto, base, mc) == "acc"
    assert _metric(auto, base, answered) == "exact_match"
    assert _metric(auto, base, plain) == "loss"
    space_file.write_text("metric: loss\nparameters:\n  lora.r: {choices: [2, 4]}\n")
    assert _metric(load_space(space_file), base, answered) == "loss"
    space_file.write_text("metric: exact_match\nparameters:\n  lora.r: {choices: [2, 4]}\n")
    with pytest.raises(ConfigError, match="no example of task .* has a reference answer"):
        _metric(load_space(space_file), base, plain)
    space_file.write_text("metric: acc\nparameters:\n  lora.r: {choices: [2, 4]}\n")
    with pytest.raises(ConfigError, match="is generative"):
        _metric(load_space(space_file), base, plain)
    space_file.write_text("metric: bleu\nparameters:\n  lora.r: {choices: [2, 4]}\n")
    with pytest.raises(ConfigError, match="metric='bleu'; choose one of auto, acc, exact_match, loss"):
        load_space(space_file)


def test_a_diverged_trial_raises_instead_of_reporting_nan():
    from raylsl.sweep.trial import trial_metrics

    results = {"train": {"final_loss": float("nan"), "train_time_s": 1.0}, "after": {"acc": 0.5}}
    with pytest.raises(RaylslError, match="diverged"):
        trial_metrics(results)


@pytest.mark.parametrize("result, error, ray_leaves_running", [
    ({"val_acc": float("nan"), "trainable_params": 10}, False, True),  # a NaN metric
    ({"training_iteration": 1}, True, True),  # errored after a report without the metrics
    (None, True, False),
])
def test_failed_or_nan_trials_are_told_fail_to_optuna(result, error, ray_leaves_running):
    from ray.tune.search.optuna import OptunaSearch

    from raylsl.sweep.search import ParetoOptunaSearch

    def space(trial):
        trial.suggest_int("n", 1, 3)

    def state_after(cls):
        searcher = cls(space=space, metric=["val_acc", "trainable_params"], mode=["max", "min"])
        searcher.suggest("t1")
        searcher.on_trial_complete("t1", result, error=error)
        return searcher._ot_study.trials[0].state

    if ray_leaves_running:  # the trap, as Ray ships it
        assert state_after(OptunaSearch) == optuna.trial.TrialState.RUNNING
    assert state_after(ParetoOptunaSearch) == optuna.trial.TrialState.FAIL


def test_a_final_checkpoint_tune_did_not_record_is_found_in_storage(tmp_path):
    """A driver killed between a trial's final upload and Tune's state save restores the trial from
    an older checkpoint; the trial must find its final one instead of training again."""
    from raylsl.storage import Storage
    from raylsl.sweep.trial import RESULTS, _unrecorded_results

    trial = tmp_path / "tune" / "run_trial_1"
    (trial / "checkpoint_000000").mkdir(parents=True)
    (trial / "checkpoint_000000" / "state.pt").write_bytes(b"step 2")
    assert _unrecorded_results(Storage(trial), tmp_path / "a") is None
    (trial / "checkpoint_000001" / "adapter").mkdir(parents=True)
    (trial / "checkpoint_000001" / "adapter" / "w").write_bytes(b"w")
    (trial / "checkpoint_000001" / RESULTS).write_text('{"after": {"acc": 0.75}}')
    out = tmp_path / "b"
    out.mkdir()
    assert _unrecorded_results(Storage(trial), out) == {"after": {"acc": 0.75}}
    assert (out / "adapter" / "w").read_bytes() == b"w" and not (out / "state.pt").exists()
    assert _unrecorded_results(Storage(tmp_path / "tune" / "never_started"), tmp_path / "c") is None


def _finished(run_dir: Path) -> list[Path]:
    """Final checkpoints of finished trials (they hold results.json)."""
    return sorted((run_dir / "tune").glob("*/checkpoint_*/results.json"))


@pytest.mark.parametrize("interrupt", [pytest.param(signal.SIGINT, marks=pytest.mark.long), signal.SIGKILL],
                         ids=["ctrl-c", "killed-driver"])
def test_interrupted_sweep_resumes_without_redoing_finished_trials(tmp_path, interrupt):
    space = write_space(tmp_path, trials=6)
    run_dir = tmp_path / "r"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "raylsl", "sweep", str(space), "--output-dir", str(tmp_path), "--name", "r",
           "--no-progress"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while len(_finished(run_dir)) < 2 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert len(_finished(run_dir)) >= 2, driver.communicate()[0][-3000:]
    driver.send_signal(interrupt)
    out = driver.communicate(timeout=120)[0]
    before = {p: p.read_bytes() for p in _finished(run_dir)}
    assert len(before) < 6, "the sweep finished before it could be interrupted"

    resumed = subprocess.run([sys.executable, "-m", "raylsl", "sweep", "--resume", str(run_dir), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, (out[-2000:], resumed.stdout[-2000:], resumed.stderr[-3000:])
    from raylsl import report

    final = report.load(run_dir)
    assert len(final.trials) == 6 and final.complete
    assert final.trials["status"].value_counts().to_dict() == {"TERMINATED": 5, "ERROR": 1}, (
        final.trials[["trial", "status", "params", "error"]].to_string(), out[-3000:], resumed.stdout[-3000:])
    for path, content in before.items():  # finished trials were kept, not trained again (a rerun's times differ)
        assert path.read_bytes() == content
    # (a trial that had finished but not yet been recorded when the driver died re-reports its results)
    assert len({path.parent.parent for path in _finished(run_dir)}) == 5
