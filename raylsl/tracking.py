"""Experiment tracking where users look: TensorBoard events or an MLflow run.

``tracking=tensorboard`` or ``tracking=mlflow`` records, on rank 0, per-step loss, learning rate
and step time (``train/*``), every evaluation (``eval_before/*`` at step 0, ``eval/*`` every
``train.eval_every`` steps, ``eval_after_<split>/*`` at the last step), the chosen blocks and the
final metrics (``final/*``); MLflow also gets the run config as parameters.

Where: ``tracking_uri``, or by default inside the run directory (``RUN_DIR/tensorboard``, or the
SQLite store ``RUN_DIR/mlflow/mlflow.db``), which works offline. A Ray Train worker writes into its
own run directory, which comes back to the driver in the run's final checkpoint like every other
record; every checkpoint carries these records too, so a restarted worker (or a run resumed on
another machine) continues them, in the same MLflow run. A ``tracking_uri`` given explicitly (an
MLflow server, ``http://host:5000``) must be one rank 0's node reaches. ``tensorboard --logdir
RUN_DIR`` or ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow/mlflow.db`` shows it.

Tracking never stops training: the first error of a tracker (a server that is down, a full disk)
is reported in one line and switches tracking off for the rest of the run. MLflow's client would
retry a server that does not answer for minutes; raylsl lowers that to seconds unless the user
set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT`` (`MLFLOW_PATIENCE`).

Sweeps do not use these trackers: Ray Tune logs every trial's reports itself (TensorBoard files in
``tune/``; with ``tracking=mlflow``, Tune's ``MLflowLoggerCallback``, one MLflow run per trial
under one experiment per sweep; see `sweep_callbacks`).
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

from raylsl.callbacks import Callback, LoopState
from raylsl.errors import RaylslError

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"
RECORD_DIRS = (TENSORBOARD_DIR, MLFLOW_DIR)
"""Directories a run's default tracking writes into (records to bring back and keep)."""
EXPERIMENT = "raylsl"
"""The MLflow experiment single runs go under."""
MLFLOW_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""How long a run's MLflow client waits for a server (seconds, not MLflow's minutes), where the
environment does not say."""


def _install_hint(what: str) -> RaylslError:
    return RaylslError(f"tracking={what} needs the {what} package: pip install 'raylsl[tracking]'")


class Tracker(Callback, ABC):
    """What both trackers log and when; subclasses say where (`_open`, `_scalars`, `_close`).

    A tracker opens its store when training starts, after a resumed run's checkpoint has put back
    the records written before it (`raylsl.training.checkpoint.read_checkpoint`), so it extends
    them. Every call into the store is guarded (`_guard`).
    """

    kind = ""
    """The ``tracking`` value this tracker implements."""

    def __init__(self, before: dict[str, Any] | None = None):
        self.before = before
        """The evaluation before training, logged at step 0 of a run that starts from scratch."""
        self.off = False
        """True once the store failed: nothing more is sent to it."""

    @abstractmethod
    def _open(self, step: int) -> None:
        """Connects to the store (creates its files); training starts after ``step``."""

    @abstractmethod
    def _scalars(self, values: dict[str, float], step: int) -> None:
        """Records ``values`` (name -> number) at ``step``."""

    def _close(self) -> None: ...

    def _guard(self, action: Callable[[], None]) -> None:
        """Runs ``action`` against the store; its first error, whatever it is (a tracking library
        raises its own kinds), is reported and switches tracking off: a run never dies of its
        tracker."""
        if self.off:
            return
        try:
            action()
        except Exception as exc:
            self.off = True
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"raylsl: warning: tracking={self.kind} failed ({reason}); tracking is off for the rest of this run",
                  file=sys.stderr, flush=True)

    def on_train_start(self, state: LoopState) -> None:
        self._guard(lambda: self._open(state.step))
        if state.step == 0:
            self.log_metrics("eval_before", self.before, 0)

    def close(self) -> None:
        self._guard(self._close)

    def log_metrics(self, prefix: str, metrics: dict[str, Any] | None, step: int) -> None:
        values = {f"{prefix}/{k}": v for k, v in (metrics or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._guard(lambda: self._scalars(values, step))

    def on_step_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        values = {f"train/{k}": metrics[k] for k in ("loss", "lr", "step_time_s") if k in metrics}
        # evaluations during training (`train.eval_every`) arrive as val_*
        values.update({f"eval/{k[4:]}": v for k, v in metrics.items() if k.startswith("val_")})
        self._guard(lambda: self._scalars(values, state.step))


class TensorBoardTracker(Tracker):
    """A run's scalars and its chosen blocks as TensorBoard events."""

    kind = "tensorboard"

    def __init__(self, log_dir: Path, blocks: str, config: str, before: dict[str, Any] | None = None):
        super().__init__(before)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _install_hint("tensorboard") from None
        self.writer_class, self.log_dir, self.blocks, self.config = SummaryWriter, log_dir, blocks, config

    def _open(self, step: int) -> None:
        # A resumed run's events past its checkpoint were logged before the crash and are logged
        # again: TensorBoard hides the old ones.
        self.writer = self.writer_class(log_dir=str(self.log_dir), purge_step=step + 1 if step else None)
        self.writer.add_text("run/blocks", self.blocks, 0)
        self.writer.add_text("run/config", "".join(f"    {line}\n" for line in self.config.splitlines()), 0)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a checkpoint copies the events: they must be on disk

    def _close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run: the config as parameters, the blocks as the tag ``raylsl.blocks``, scalars
    as metrics by step. Uses `MlflowClient` (no global active run), so trials and tests in one
    process do not step on each other. A resumed run continues its MLflow run (its id is the
    tracker's checkpointed state) when the store still has it."""

    kind = "mlflow"

    def __init__(self, uri: str, run_name: str, blocks: str, params: dict[str, Any], experiment: str = EXPERIMENT,
                 before: dict[str, Any] | None = None):
        super().__init__(before)
        try:
            from mlflow.tracking import MlflowClient  # noqa: F401
        except ImportError:
            raise _install_hint("mlflow") from None
        self.uri, self.run_name, self.blocks, self.params, self.experiment = uri, run_name, blocks, params, experiment
        self.run_id: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id or ""}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or None

    def _open(self, step: int) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        for name, value in MLFLOW_PATIENCE.items():
            os.environ.setdefault(name, value)
        local = local_store(self.uri)
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        if self.run_id is not None:
            try:
                self.client.update_run(self.run_id, status="RUNNING")
                return
            except MlflowException:  # a store that lost the run (a tracking_uri of its own): a new one
                pass
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # a local store keeps its (unused) artifact root beside itself, not in the working directory
            experiment_id = self.client.create_experiment(
                self.experiment, artifact_location=(local.parent / "artifacts").as_uri() if local else None)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags={"raylsl.blocks": self.blocks})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in self.params.items()])

    def _scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if values:
            stamp = _now_ms()
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])

    def _close(self) -> None:
        self.client.set_terminated(self.run_id)


def quiet_mlflow() -> None:
    """MLflow announces creating its SQLite tables at INFO; a run prints no library chatter."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def local_store(uri: str) -> Path | None:
    """The file of an ``sqlite:///`` tracking URI (None for a server)."""
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


def default_mlflow_uri(directory: Path) -> str:
    """The SQLite store ``DIRECTORY/mlflow/mlflow.db``."""
    return f"sqlite:///{(Path(directory) / MLFLOW_DIR / 'mlflow.db').resolve()}"


def make_tracker(kind: str, uri: str | None, out_dir: Path, run_name: str, blocks: str,
                 config: dict[str, Any], before: dict[str, Any] | None = None) -> Tracker:
    """The tracker ``kind`` writing to ``uri`` (default: inside ``out_dir``); ``before``: the
    evaluation before training."""
    if kind == "mlflow":
        return MLflowTracker(uri or default_mlflow_uri(out_dir), run_name, blocks, _flatten(config), before=before)
    import yaml

    return TensorBoardTracker(Path(uri) if uri else out_dir / TENSORBOARD_DIR, blocks,
                              yaml.safe_dump(config, sort_keys=False), before)


def sweep_callbacks(kind: str, uri: str | None, sweep_dir: Path, experiment: str) -> list:
    """Ray Tune callbacks for a sweep's tracking: MLflow's (one run per trial, every report of it,
    under the experiment ``experiment``); TensorBoard needs none (Tune writes its events anyway)."""
    if kind != "mlflow":
        return []
    try:
        import mlflow  # noqa: F401
        from ray.air.integrations.mlflow import MLflowLoggerCallback
    except ImportError:
        raise _install_hint("mlflow") from None
    quiet_mlflow()
    uri = uri or default_mlflow_uri(sweep_dir)
    local = local_store(uri)
    if local is not None:  # create the experiment with its artifact root beside the store
        from mlflow.tracking import MlflowClient

        local.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=(local.parent / "artifacts").as_uri())
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, save_artifact=False)]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
