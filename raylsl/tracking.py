"""Experiment tracking where users look: TensorBoard events or an MLflow run.

``tracking=tensorboard`` or ``tracking=mlflow`` records, on rank 0, per-step loss, learning rate
and step time (``train/*``), every evaluation (``eval_before/*`` at step 0, ``eval/*`` every
``train.eval_every`` steps, ``eval_after_<split>/*`` at the last step), the chosen blocks and the
final metrics (``final/*``); MLflow also gets the run config as parameters.

Where: ``tracking_uri``, or by default inside the run directory (``RUN_DIR/tensorboard``, or the
SQLite store ``RUN_DIR/mlflow/mlflow.db``), which works offline. A Ray Train worker writes into its
own run directory, which comes back to the driver in the run's final checkpoint like every other
record; a ``tracking_uri`` given explicitly (an MLflow server, ``http://host:5000``) must be one
rank 0's node reaches. ``tensorboard --logdir RUN_DIR`` or
``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow/mlflow.db`` shows it.

Sweeps do not use these trackers: Ray Tune logs every trial's reports itself (TensorBoard files in
``tune/``; with ``tracking=mlflow``, Tune's ``MLflowLoggerCallback``, one MLflow run per trial
under one experiment per sweep; see `sweep_callbacks`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from raylsl.callbacks import Callback, LoopState
from raylsl.errors import RaylslError

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"
RECORD_DIRS = (TENSORBOARD_DIR, MLFLOW_DIR)
"""Directories a run's default tracking writes into (records to bring back and keep)."""
EXPERIMENT = "raylsl"
"""The MLflow experiment single runs go under."""


def _install_hint(what: str) -> RaylslError:
    return RaylslError(f"tracking={what} needs the {what} package: pip install 'raylsl[tracking]'")


class Tracker(Callback, ABC):
    """What both trackers log and when; subclasses say how (`_scalars`, `close`)."""

    @abstractmethod
    def _scalars(self, values: dict[str, float], step: int) -> None:
        """Records ``values`` (name -> number) at ``step``."""

    def close(self) -> None: ...

    def log_metrics(self, prefix: str, metrics: dict[str, Any] | None, step: int) -> None:
        self._scalars({f"{prefix}/{k}": v for k, v in (metrics or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}, step)

    def on_step_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        values = {f"train/{k}": metrics[k] for k in ("loss", "lr", "step_time_s") if k in metrics}
        # evaluations during training (`train.eval_every`) arrive as val_*
        values.update({f"eval/{k[4:]}": v for k, v in metrics.items() if k.startswith("val_")})
        self._scalars(values, state.step)


class TensorBoardTracker(Tracker):
    """A run's scalars and its chosen blocks as TensorBoard events."""

    def __init__(self, log_dir: Path, blocks: str, config: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _install_hint("tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("run/blocks", blocks, 0)
        self.writer.add_text("run/config", "".join(f"    {line}\n" for line in config.splitlines()), 0)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run: the config as parameters, the blocks as the tag ``raylsl.blocks``, scalars
    as metrics by step. Uses `MlflowClient` (no global active run), so trials and tests in one
    process do not step on each other."""

    def __init__(self, uri: str, run_name: str, blocks: str, params: dict[str, Any], experiment: str = EXPERIMENT):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _install_hint("mlflow") from None
        quiet_mlflow()
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # a local store keeps its (unused) artifact root beside itself, not in the working directory
            local = local_store(uri)
            experiment_id = self.client.create_experiment(
                experiment, artifact_location=(local.parent / "artifacts").as_uri() if local else None)
        run = self.client.create_run(experiment_id, run_name=run_name, tags={"raylsl.blocks": blocks})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def _scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if values:
            stamp = _now_ms()
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])

    def close(self) -> None:
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
    """The SQLite store ``DIRECTORY/mlflow/mlflow.db`` (the directory is created)."""
    (Path(directory) / MLFLOW_DIR).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(Path(directory) / MLFLOW_DIR / 'mlflow.db').resolve()}"


def make_tracker(kind: str, uri: str | None, out_dir: Path, run_name: str, blocks: str,
                 config: dict[str, Any]) -> Tracker:
    """The tracker ``kind`` writing to ``uri`` (default: inside ``out_dir``)."""
    if kind == "mlflow":
        return MLflowTracker(uri or default_mlflow_uri(out_dir), run_name, blocks, _flatten(config))
    import yaml

    return TensorBoardTracker(Path(uri) if uri else out_dir / TENSORBOARD_DIR, blocks,
                              yaml.safe_dump(config, sort_keys=False))


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
