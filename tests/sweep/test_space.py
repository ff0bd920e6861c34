"""Search space files: the shipped ones load and validate; each bad input is one clear message."""

from pathlib import Path

import pytest

from raylsl.errors import ConfigError
from raylsl.sweep.space import check_against_config, load_space, trial_overrides

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))


def test_the_shipped_spaces_exist():
    assert {p.name for p in SPACES} >= {"default.yaml", "ist.yaml", "smoke.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_space_file_loads_and_fits_its_base_config(path):
    text = path.read_text()
    assert text.startswith("# Local:   raylsl sweep search_spaces/") and "ray job submit" in text.splitlines()[1]
    space = load_space(path)
    check_against_config(space, {})  # every value makes a valid run config
    assert space.baseline(8)["selector"] == "all"


def write(tmp_path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("body, message", [
    ("trails: 3\nparameters: {lora.r: {choices: [4]}}", "unknown key 'trails'"),
    ("parameters: {}", "'parameters' must map at least one parameter"),
    ("parameters: {n: {low: 5, high: 2}}", "parameters.n: empty range low=5 >= high=2"),
    ("parameters: {n: {choices: []}}", "parameters.n: choices must be a non-empty list"),
    ("parameters: {n: {lo: 1, high: 2}}", "parameters.n: unknown field 'lo'"),
    ("parameters: {ist.mu: {low: 1.0, high: 9.0, when: {selector: ist}}}",
     "parameters.ist.mu: when: selector is not a parameter listed before it"),
    ("parameters: {selector: {choices: [cka]}, ist.mu: {low: 1.0, high: 9.0, when: {selector: ist}}}",
     "when: selector='ist' is not among selector's choices"),
    ("parameters: {lora.r: {low: 0, high: 8, log: true}}", "log=true needs low > 0"),
    ("sampler: grid\nparameters: {lora.r: {choices: [4]}}", "sampler='grid'"),
    ("scheduler: asha\nparameters: {lora.r: {choices: [4]}}", "scheduler='asha'; choose one of none, pareto_halving"),
    ("eta: 1\nparameters: {lora.r: {choices: [4]}}", "eta=1 must be an integer >= 2"),
    ("population_size: 1\nparameters: {lora.r: {choices: [4]}}", "population_size=1 must be an integer >= 2"),
    ("rungs: 0\nparameters: {lora.r: {choices: [4]}}", "rungs"),
    ("trials: 0\nparameters: {lora.r: {choices: [4]}}", "trials=0 must be a positive integer"),
    ("base: nowhere.yaml\nparameters: {lora.r: {choices: [4]}}", "base: nowhere.yaml does not exist"),
    ("points: [{lora.rank: 4}]\nparameters: {lora.r: {choices: [4]}}", "points: 'lora.rank' is not one of"),
])
def test_bad_space_files_name_file_and_key(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert message in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("body, message", [
    ("parameters: {selector: {choices: [cka, cak]}, n: {low: 1, high: 2}}",
     "parameters.selector = 'cak': unknown selector 'cak'"),
    ("parameters: {lora.rank: {choices: [4, 8]}}", "parameters.lora.rank = 4: unknown key 'lora.rank'"),
    ("parameters: {lora.r: {choices: [0, 8]}}", "parameters.lora.r = 0: lora.r=0 must be a positive integer"),
])
def test_values_are_checked_against_the_run_config(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        check_against_config(load_space(path), {})
    assert message in str(err.value) and str(path) in str(err.value)


def test_n_goes_where_each_selector_reads_its_budget():
    assert trial_overrides({"selector": "cka", "n": 0.5}) == {"selector": "cka", "n": 0.5, "layers": "all"}
    assert trial_overrides({"selector": "ist", "n": 4}) == {"selector": "ist", "ist.n_update": 4, "layers": "all"}
    assert trial_overrides({"selector": "lisa", "n": 4}) == {"selector": "lisa", "lisa.n_active": 4, "layers": "all"}
    assert trial_overrides({"selector": "all", "n": 4, "lora.r": 8}) == {"lora.r": 8, "layers": "all"}


def test_conditional_parameters_are_asked_only_under_their_parent():
    optuna = pytest.importorskip("optuna")
    space = load_space(Path(__file__).parents[2] / "search_spaces" / "ist.yaml")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(20):
        trial = study.ask()
        space(trial)
        seen.append(trial.params)
        study.tell(trial, [0.5, 1.0])
    for params in seen:
        assert ("ist.mu" in params) == (params["selector"] == "ist")
    assert any("ist.mu" in p for p in seen) and any("ist.mu" not in p for p in seen)


def test_the_sweeps_copy_of_a_space_file_loads_anywhere(tmp_path):
    """The shipped spaces name their base relative to search_spaces/; the sweep's own copy lives
    elsewhere (and is read on resume, from any machine), so it drops base (base_config.yaml holds it)."""
    from raylsl.sweep.run import _portable_space

    original = Path("search_spaces/smoke.yaml")
    copy = tmp_path / "elsewhere" / "space.yaml"
    copy.parent.mkdir()
    copy.write_text(_portable_space(original))
    loaded, shipped = load_space(copy), load_space(original)
    assert loaded.base is None and shipped.base is not None
    assert loaded.parameters == shipped.parameters and loaded.points == shipped.points
    assert (loaded.trials, loaded.sampler, loaded.seed) == (shipped.trials, shipped.sampler, shipped.seed)
