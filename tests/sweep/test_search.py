"""The sweep's searcher on its own (no Tune run): repeated proposals are answered, not trained."""

import optuna
import pytest

from raylsl.sweep.search import ParetoOptunaSearch, make_sampler, nsga2_population, run_signature
from raylsl.sweep.space import load_space

pytest.importorskip("ray.tune")

SPACE = """\
trials: 8
parameters:
  selector: {choices: [all, last]}
  n: {choices: [1, 2]}
  lora.r: {choices: [4]}
"""


def _searcher(tmp_path, sampler="random"):
    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(tmp_path / "space.yaml")
    return ParetoOptunaSearch(space=space, metric=["val_acc", "trainable_params"], mode=["max", "min"],
                              sampler=make_sampler(sampler, 0))


def test_signature_is_the_resolved_run():
    # n means nothing to plain LoRA on every block: all with n=1 and with n=2 are one run
    assert run_signature({"selector": "all", "n": 1, "lora": {"r": 4}}) == \
        run_signature({"selector": "all", "n": 2, "lora": {"r": 4}})
    assert run_signature({"selector": "last", "n": 1, "lora": {"r": 4}}) != \
        run_signature({"selector": "last", "n": 2, "lora": {"r": 4}})


def test_signature_compares_fractional_budgets_as_block_counts():
    # TPE proposed n = 0.106, 0.110 and 0.132 for `last` on SmolLM2's 30 blocks: all 3 blocks, one run
    same = [{"selector": "last", "n": n, "lora": {"r": 4}} for n in (0.106, 0.110, 0.132)]
    assert len({run_signature(c, num_blocks=30) for c in same}) == 1
    assert run_signature(same[0], num_blocks=30) == run_signature({**same[0], "n": 3}, num_blocks=30)
    assert run_signature(same[0], num_blocks=30) != run_signature({**same[0], "n": 0.134}, num_blocks=30)  # 4
    assert len({run_signature(c) for c in same}) == 3  # block count unknown: compared as sampled
    ist = [{"selector": "ist", "n": n, "ist": {"mu": 10.0}} for n in (0.25, 0.26)]  # n -> ist.n_update: 7 of 30
    assert run_signature(ist[0], num_blocks=30) == run_signature(ist[1], num_blocks=30)
    # a fraction that rounds to no block is left as sampled: the trial fails with Budget's message
    assert run_signature({"selector": "last", "n": 0.01}, num_blocks=30) != \
        run_signature({"selector": "last", "n": 0.02}, num_blocks=30)


def test_a_repeated_proposal_is_answered_from_the_finished_trial(tmp_path, capsys):
    search = _searcher(tmp_path)
    trained, values = {}, {}
    for i in range(3):  # the space holds 3 distinct runs: all, last n=1, last n=2
        trial_id = f"t{i}"
        config = search.suggest(trial_id)
        assert isinstance(config, dict), config
        signature = run_signature(config)
        assert signature not in trained  # never trains a configuration a finished trial has
        trained[signature] = trial_id
        values[trial_id] = {"val_acc": 0.5 + i / 10, "trainable_params": 100 * (i + 1)}
        search.on_trial_complete(trial_id, values[trial_id])
    assert len(trained) == 3
    # every further proposal repeats one of the three: answered, and the space reported exhausted
    assert search.suggest("t3") == search.FINISHED
    assert "the space is exhausted" in capsys.readouterr().out
    study = search.study
    states = {t.state for t in study.trials}
    assert states == {optuna.trial.TrialState.COMPLETE}  # nothing left RUNNING
    assert len(study.trials) == 3 + len(search.repeats) and len(search.repeats) >= 50
    for repeat in search.repeats:  # told with exactly the values of the trial it repeats
        done = values[repeat["answered_by"]]
        told = next(t for t in study.trials if t.params == _flat_params(repeat["config"]))
        assert told.values == [done["val_acc"], done["trainable_params"]]
        assert run_signature(repeat["config"]) == next(s for s, t in trained.items() if t == repeat["answered_by"])


def test_a_failed_trial_is_not_an_answer(tmp_path):
    search = _searcher(tmp_path)
    first = search.suggest("t0")
    search.on_trial_complete("t0", None, error=True)
    assert run_signature(first) not in search.finished  # its configuration may be proposed and trained again


def _flat_params(config):
    from ray.tune.utils import flatten_dict

    return flatten_dict(config, delimiter=".")


def test_a_trial_stopped_early_is_pruned_and_its_repeats_are_not_trained(tmp_path, capsys):
    search = _searcher(tmp_path)
    config = search.suggest("t0")
    # the scheduler stopped it: its last result is an evaluation during training
    search.on_trial_complete("t0", {"val_acc": 0.4, "trainable_params": 100, "fraction": 1 / 3, "final": False})
    assert search.study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert search.pruned == {run_signature(config): "t0"}
    # a finished trial's last result says final: True and is COMPLETE as before
    search.suggest("t1")
    search.on_trial_complete("t1", {"val_acc": 0.6, "trainable_params": 200, "final": True})
    assert search.study.trials[1].state == optuna.trial.TrialState.COMPLETE
    for i in range(2, 6):  # proposals that repeat t0 are pruned again, never handed to Tune
        proposed = search.suggest(f"t{i}")
        if isinstance(proposed, dict):
            assert run_signature(proposed) not in search.pruned
            search.on_trial_complete(f"t{i}", {"val_acc": 0.5, "trainable_params": 50, "final": True})
    again = [r for r in search.repeats if r["answered_by"] == "t0"]
    assert again and "pruned again, not trained" in capsys.readouterr().out
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in search.study.trials)


@pytest.mark.parametrize("trials, size", [(16, 4), (40, 5), (100, 12), (1000, 50)])
def test_nsga2_population_is_an_eighth_of_the_trials_within_4_to_50(trials, size):
    assert nsga2_population(trials) == size == make_sampler("nsga2", 0, trials=trials).population_size
    assert make_sampler("nsga2", 0, population_size=6, trials=trials).population_size == 6


def test_nsga2_evolves_within_a_short_sweep():
    """With Optuna's population of 50, all 24 trials of this sweep would be generation 0, drawn at
    random; the sweep's default (24 // 8 -> 4) breeds from finished trials after the first 4."""
    def objective(trial):
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return x, y

    generations = {}
    for name, sampler in (("default", make_sampler("nsga2", 0, trials=24)),
                          ("optuna", optuna.samplers.NSGAIISampler(seed=0))):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(objective, n_trials=24)
        generations[name] = [t.system_attrs["NSGAIISampler:generation"] for t in study.trials]
    assert generations["optuna"] == [0] * 24
    assert generations["default"][:4] == [0] * 4 and max(generations["default"]) >= 4


def test_fractional_budgets_compare_as_block_counts_once_a_trial_reports_the_model(tmp_path, capsys):
    """A space with no static selector gives the driver no block count: the searcher learns it
    from the first trial's report and recomputes the signatures it has, in flight and finished."""
    (tmp_path / "space.yaml").write_text("trials: 8\nparameters:\n  selector: {choices: [last]}\n"
                                         "  n: {low: 0.5, high: 0.74}\n")  # on 4 blocks: always 2
    search = ParetoOptunaSearch(space=load_space(tmp_path / "space.yaml"), metric=["val_acc", "trainable_params"],
                                mode=["max", "min"], sampler=make_sampler("random", 0))
    first, second = search.suggest("t0"), search.suggest("t1")
    assert first["n"] != second["n"]  # different as sampled; both in flight before any report
    search.on_trial_result("t0", {"val_acc": 0.5, "trainable_params": 10, "fraction": 0.5, "final": False,
                                  "num_blocks": 4})
    assert search.num_blocks == 4
    assert search._signatures["t0"] == search._signatures["t1"] == run_signature(first, 4)
    search.on_trial_complete("t0", {"val_acc": 0.6, "trainable_params": 10, "final": True, "num_blocks": 4})
    assert list(search.finished) == [run_signature(second, 4)]
    assert search.suggest("t2") == search.FINISHED  # every further n in [0.5, 0.74] is 2 of 4 blocks
    assert "repeats finished trial t0" in capsys.readouterr().out


def test_a_searcher_pickled_before_num_blocks_and_configs_existed_still_suggests(tmp_path):
    """Tune unpickles a resumed sweep's searcher without calling __init__: attributes added to the
    class since the sweep started must get their defaults, not raise AttributeError in suggest."""
    import pickle

    search = _searcher(tmp_path)
    search.suggest("t0")
    del search.num_blocks, search.configs  # as an older raylsl pickled it
    old = pickle.loads(pickle.dumps(search))
    assert old.num_blocks is None and old.configs == {}
    assert isinstance(old.suggest("t1"), dict) and "t1" in old.configs
    old.learn_num_blocks(4)  # t0's configuration is unknown to it: its signature is kept as it was
    assert old.num_blocks == 4 and set(old._signatures) == {"t0", "t1"}


DATABASE = "postgresql://optuna:s3cret@db.internal:5432/studies"


def test_a_database_password_is_not_saved_with_the_sweep(tmp_path):
    """sweep.json and the sweep's copy of the space file keep the database URL without its password."""
    from raylsl.sweep.run import _portable_space, _settings

    path = tmp_path / "space.yaml"
    path.write_text(SPACE + f"optuna_storage: {DATABASE}\n")
    space = load_space(path)
    saved = [_portable_space(path), str(_settings(space, path, {}, None, None, None, False))]
    assert all("s3cret" not in text and "postgresql://optuna@db.internal:5432/studies" in text for text in saved)


def test_the_pickled_study_storage_has_no_password_and_a_resume_reads_it_from_the_environment(monkeypatch):
    """Tune pickles the searcher, and the study's storage with it, into the sweep's storage."""
    import pickle

    from raylsl.sweep.search import PASSWORD_ENV, PasswordFreeRDBStorage

    storage = PasswordFreeRDBStorage.__new__(PasswordFreeRDBStorage)  # no database server here to connect to
    storage.__dict__.update(url=DATABASE, engine_kwargs={}, scoped_session=None, engine=None, _version_manager=None)
    state = pickle.dumps(storage)
    assert b"s3cret" not in state
    connected = []
    monkeypatch.setattr(optuna.storages.RDBStorage, "__setstate__", lambda self, s: connected.append(s["url"]))
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    pickle.loads(state)
    assert connected == ["postgresql://optuna:from-env@db.internal:5432/studies"]
