"""The sweep's searcher: Ray Tune's `OptunaSearch`, multi-objective, with the traps closed.

The Optuna study lives in the searcher (in memory), so it is saved with Ray Tune's experiment
state in the sweep's storage and restored with it on ``--resume``, from any machine; the study
and Tune's trial states therefore always agree. After every finished trial the study is also
exported as an SQLite file (``optuna.db`` in the sweep's storage) for Optuna's own tools, unless
the space file names an RDB URL (``optuna_storage:``), which is then used directly. Such a URL's
password is never saved (`public_url`: not in ``sweep.json``, the copied space file or the pickled
searcher); a resumed sweep reads it from ``$RAYLSL_OPTUNA_PASSWORD`` (`PASSWORD_ENV`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch
from sqlalchemy.engine import URL, make_url

from raylsl.storage import Storage


def make_sampler(name: str, seed: int, n_startup_trials: int | None = None, population_size: int | None = None,
                 trials: int = 16):
    """Optuna's TPE (multi-objective; ``n_startup_trials`` random ones first), random search, or
    NSGA-II with ``population_size`` trials per generation (default ``nsga2_population(trials)``)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size or nsga2_population(trials))
    return optuna.samplers.TPESampler(seed=seed, **({} if n_startup_trials is None else
                                                    {"n_startup_trials": n_startup_trials}))


def nsga2_population(trials: int) -> int:
    """NSGA-II's generation size for a sweep of ``trials``: one eighth of them, 4 to 50.

    Optuna's default of 50 draws the whole first generation at random, and a generation counts only
    completed trials (not those Pareto halving stops), so with it any sweep of up to ~50 finished
    trials is plain random search. An eighth leaves several generations to evolve even when halving
    stops two trials in three."""
    return min(50, max(4, trials // 8))


def run_signature(config: dict[str, Any], num_blocks: int | None = None) -> str:
    """What a trial's sampled values resolve to as a run (`trial_overrides`: ``n`` where its
    selector reads it, nothing for plain LoRA on all blocks), as a comparable string. Given the
    model's ``num_blocks``, a fractional budget is the block count it resolves to, so n=0.106 and
    n=0.132 on 30 blocks (both 3 blocks) are one run."""
    from ray.tune.utils import flatten_dict

    from raylsl.errors import ConfigError
    from raylsl.selectors.base import Budget
    from raylsl.sweep.space import BUDGET_KEY, trial_overrides

    flat = trial_overrides(flatten_dict(config, delimiter="."))
    for key in ("n", *BUDGET_KEY.values()) if num_blocks else ():
        if isinstance(flat.get(key), float):
            try:
                flat[key] = Budget(flat[key]).count(num_blocks)
            except ConfigError:
                pass  # rounds to 0 blocks: the trial itself fails with that message
    return json.dumps({k: round(v, 12) if isinstance(v, float) else v for k, v in sorted(flat.items())})


MAX_REPEATS = 50
"""Proposals in a row that all repeat finished trials before the space counts as exhausted."""


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch that records a failed, metric-less or infeasible (refused by the fit check)
    trial as FAIL in the study, a trial the scheduler stopped early (its last report is an
    evaluation during training, ``final: False``) as PRUNED, answers a proposal that repeats a
    finished trial from that trial's result (a pruned one as pruned, an infeasible one as failed)
    instead of running it again, and exports the study after each trial.

    Ray's multi-objective path passes ``[None, None]`` to ``study.tell`` for a trial that errored,
    which Optuna rejects; Ray only logs that, and the study would keep the trial RUNNING forever.
    TPE proposes the same configuration again now and then (twice in a 16-trial SmolLM2 sweep, and
    n = 0.106, 0.110, 0.132, all 3 of 30 blocks, in a 40-trial one): such a proposal is told to
    Optuna with the finished trial's values and the next one is asked for, so every Tune trial
    trains a configuration no finished trial has.
    """

    def __init__(self, *args, export_to: str | None = None, num_blocks: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.export_to = export_to
        """Storage URI of the sweep; ``optuna.db`` is written there."""
        self.num_blocks = num_blocks
        """The model's blocks, to compare fractional budgets as block counts (None until known: the
        driver knows it from a static selector's scores, or learns it from a trial's first report)."""
        self.configs: dict[str, dict[str, Any]] = {}
        """Tune trial id -> the configuration it trains, to recompute signatures once ``num_blocks`` is known."""
        self._signatures: dict[str, str] = {}
        """Tune trial id -> its run signature, for trials in flight."""
        self.finished: dict[str, dict[str, Any]] = {}
        """Run signature -> {"trial_id", "values"} of each trial that finished with metrics."""
        self.repeats: list[dict[str, Any]] = []
        """Proposals answered from a finished trial: {"config", "answered_by"}."""
        self.pruned: dict[str, str] = {}
        """Run signature -> id of the trial the scheduler stopped early with it."""
        self.infeasible: dict[str, str] = {}
        """Run signature -> id of the trial the fit check refused with it (it cannot fit)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A searcher pickled by an older raylsl (a resumed sweep's) lacks what was added since."""
        self.__dict__.update({"num_blocks": None, "configs": {}, "infeasible": {}, **state})

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(MAX_REPEATS):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            signature = run_signature(config, self.num_blocks)
            done = self.finished.get(signature)
            if signature in self.pruned:  # the scheduler already judged it: pruned again
                self._ot_study.tell(self._ot_trials.pop(trial_id), state=optuna.trial.TrialState.PRUNED)
                self.repeats.append({"config": config, "answered_by": self.pruned[signature]})
                print(f"raylsl: the proposed trial {signature} repeats trial {self.pruned[signature]}, stopped "
                      f"early: pruned again, not trained", flush=True)
                continue
            if signature in self.infeasible:  # it cannot fit, however often it is proposed
                self._ot_study.tell(self._ot_trials.pop(trial_id), state=optuna.trial.TrialState.FAIL)
                self.repeats.append({"config": config, "answered_by": self.infeasible[signature]})
                print(f"raylsl: the proposed trial {signature} repeats trial {self.infeasible[signature]}, which "
                      f"cannot fit: not run", flush=True)
                continue
            if done is None:
                self._signatures[trial_id] = signature
                self.configs[trial_id] = config
                return config
            # Told as a finished trial of its own (Optuna learns the point again, as if trained),
            # then forgotten, so that the next super().suggest asks Optuna afresh.
            self._ot_study.tell(self._ot_trials.pop(trial_id), done["values"])
            self.repeats.append({"config": config, "answered_by": done["trial_id"]})
            print(f"raylsl: the proposed trial {signature} repeats finished trial {done['trial_id']}: "
                  f"answered from its result, not trained again", flush=True)
        print(f"raylsl: {MAX_REPEATS} proposals in a row repeated finished trials: the space is exhausted",
              flush=True)
        return self.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.learn_num_blocks(result.get("num_blocks"))
        super().on_trial_result(trial_id, result)

    def learn_num_blocks(self, num_blocks: int | None) -> None:
        """Takes the model's block count from a trial's report, if the searcher did not know it, and
        recomputes the signatures of the trials so far, so that fractional budgets sampled before
        compare as block counts too (a trial from a pickle older than ``configs`` keeps its own)."""
        if not num_blocks or self.num_blocks:
            return
        self.num_blocks = int(num_blocks)

        def resign(signature: str, trial_id: str) -> str:
            config = self.configs.get(trial_id)
            return signature if config is None else run_signature(config, self.num_blocks)

        self.finished = {resign(s, done["trial_id"]): done for s, done in self.finished.items()}
        self.pruned = {resign(s, trial_id): trial_id for s, trial_id in self.pruned.items()}
        self._signatures = {trial_id: resign(s, trial_id) for trial_id, s in self._signatures.items()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.learn_num_blocks((result or {}).get("num_blocks"))
        if not error and (result or {}).get("final") is False and trial_id in self._ot_trials \
                and trial_id not in self._completed_trials:
            # Stopped by the scheduler after an evaluation during training: pruned, not finished.
            self.pruned[self._signatures.pop(trial_id, "")] = trial_id
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            self.export()
            return
        if (result or {}).get("infeasible") and trial_id in self._signatures:
            self.infeasible[self._signatures[trial_id]] = trial_id
        values = [(result or {}).get(metric) for metric in self.metric]
        ok = not error and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        signature = self._signatures.pop(trial_id, None)
        if ok and signature is not None and trial_id not in self._completed_trials:
            self.finished[signature] = {"trial_id": trial_id, "values": [float(v) for v in values]}
        if ok or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
        else:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
        self.export()

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def export(self) -> None:
        """Writes the study as ``optuna.db`` (SQLite) into the sweep's storage."""
        if self.export_to is None or self._ot_study is None or self._storage is not None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "optuna.db"
            optuna.copy_study(from_study_name=self._ot_study.study_name, from_storage=self._ot_study._storage,
                              to_storage=f"sqlite:///{path}")
            Storage(self.export_to).write_bytes("optuna.db", path.read_bytes())


PASSWORD_ENV = "RAYLSL_OPTUNA_PASSWORD"
"""Where a resumed sweep finds the password of its ``optuna_storage`` database."""


def public_url(url: str) -> str:
    """A database URL without its password: what a sweep saves of ``optuna_storage``."""
    parsed = make_url(url)
    if parsed.password is None:
        return url
    return URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database,
                      parsed.query).render_as_string(hide_password=False)


class PasswordFreeRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, pickled without its URL's password (Tune saves the searcher, and with
    it the study's storage, into the sweep's storage); unpickled by a resumed sweep, it takes the
    password from ``$RAYLSL_OPTUNA_PASSWORD`` when that is set."""

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "url": public_url(self.url)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        password = os.environ.get(PASSWORD_ENV)
        if password:
            url = make_url(state["url"]).set(password=password)
            state = {**state, "url": url.render_as_string(hide_password=False)}
        super().__setstate__(state)


def searcher(space, settings: dict[str, Any], points: list[dict], export_to: str,
             num_blocks: int | None = None, storage_url: str | None = None) -> ParetoOptunaSearch:
    """The sweep's searcher; ``storage_url``: the space file's ``optuna_storage`` (an RDB URL, its
    password included), else the study lives in the searcher."""
    from raylsl.report import objectives

    os.environ.setdefault("OPTUNA_DISABLE_EXPERIMENTAL_WARNINGS", "1")
    goals = objectives(settings.get("metric", "acc"), settings.get("objectives"))
    return ParetoOptunaSearch(space=space, metric=list(goals), mode=list(goals.values()),
                              points_to_evaluate=points,
                              sampler=make_sampler(settings["sampler"], settings["seed"], settings.get("n_startup_trials"),
                                                   settings.get("population_size"), settings["trials"]),
                              study_name=settings["study_name"],
                              storage=PasswordFreeRDBStorage(storage_url) if storage_url else None,
                              export_to=export_to, num_blocks=num_blocks)
