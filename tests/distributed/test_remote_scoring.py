"""Scoring in a Ray task (`raylsl.scoring.score_in_ray`) on the suite's one-node Ray: the same
scores as in this process, the node recorded, a user's mistake raised as its one line. That the
task runs on another node than the driver's, and that the driver never loads the model, is
`test_no_shared_disk`'s."""

import pytest

from raylsl.data import load_task
from raylsl.errors import ModelError
from raylsl.plan import ModelSource
from raylsl.scoring import score_here, score_in_ray, scores_elsewhere


def test_a_ray_task_scores_as_this_process_does(ray_session, tiny_config, tmp_path):
    config = tiny_config(selector="cka", n=2, workers=1, storage=str(tmp_path / "storage"))
    task = load_task(config.task, config.data)
    assert not scores_elsewhere()  # Ray on this node alone: the plan scores in its own process
    here, _ = score_here(config, ModelSource("tiny-llama"), "decoder", task)
    there = score_in_ray(config, ModelSource("tiny-llama"), "decoder", task)
    assert there.scores == here.scores and there.layers == here.layers
    assert there.cached and not here.cached  # the task found this process's scores in the run's storage
    assert [p.name.endswith(".json") for p in (tmp_path / "storage" / "score-cache").iterdir()] == [True]
    assert there.placement["ray_node"] == ray_session.get_runtime_context().get_node_id()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=f"cannot read the config of model '{broken}'"):
        score_in_ray(config, ModelSource(str(broken)), "decoder", task)
