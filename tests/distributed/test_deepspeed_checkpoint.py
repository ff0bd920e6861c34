"""DeepSpeed's optimizer state is read weights-only: a tampered checkpoint file cannot run code.

One gloo process (world 1) runs the engine without Ray, as test_zero_dynamic does.
"""

import json
import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("deepspeed")


class _Payload:
    """What an attacker with write access to the storage would put into a checkpoint file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _engine():
    from raylsl.config import load_config
    from raylsl.distributed.deepspeed_engine import DeepSpeedEngine, full_config
    from raylsl.lora import apply_lora
    from raylsl.models import find_blocks, resolve_model

    config = load_config(None, {"model": "tiny-llama", "train.batch_size": 2})
    model, _ = resolve_model("tiny-llama").load()
    path, blocks = find_blocks(model)
    model = apply_lora(model, [1, 2], config.lora, path, blocks, "decoder")
    return DeepSpeedEngine(model, config.train, full_config({"zero_optimization": {"stage": 2}}, config.train, False))


def _worker(rank: int, root: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=0, world_size=1)
    trained = _engine()
    ids = torch.randint(0, 100, (2, 8))
    trained.backward(trained.module(input_ids=ids, labels=ids).loss, last_micro=True)
    trained.step()
    checkpoint = Path(root) / "checkpoint"
    checkpoint.mkdir()
    trained.save_state(checkpoint, 0)
    resumed = _engine()
    resumed.load_state(checkpoint)  # DeepSpeed's own files load weights-only
    same = all(torch.equal(a, b) for a, b in zip(trained.optimizer.single_partition_of_fp32_groups,
                                                 resumed.optimizer.single_partition_of_fp32_groups))
    (optim,) = checkpoint.glob("deepspeed/state/*optim_states.pt")
    torch.save({"optimizer_state_dict": _Payload(f"{root}/code-ran")}, optim)
    try:
        _engine().load_state(checkpoint)
        refused = ""
    except pickle.UnpicklingError as exc:
        refused = str(exc).splitlines()[0]
    (Path(root) / "result.json").write_text(json.dumps({"same": same, "refused": refused}))
    dist.destroy_process_group()


def test_a_tampered_deepspeed_checkpoint_cannot_run_code(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(str(tmp_path), port), nprocs=1, join=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["same"], "the optimizer state did not come back"
    assert "Weights only load failed" in result["refused"] and not (tmp_path / "code-ran").exists()
