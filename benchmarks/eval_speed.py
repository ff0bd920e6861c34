"""raylsl's multiple-choice evaluation against lm-evaluation-harness on the same split.

    pip install -c constraints.txt -e ".[bench]"      # lm-eval, for this benchmark only
    python benchmarks/eval_speed.py [--tasks sarcasm quartz] [--n 500] [--repeats 2]

SmolLM2-135M is loaded once; each task's test split (raylsl's seeded split, ``--n`` examples) is
written to a local JSONL file and evaluated by both tools in the same process, alternately:
- lm-eval 0.4.x: ``simple_evaluate`` with the model object wrapped in its ``HFLM``, a custom task
  over that file (``output_type: multiple_choice``, the context as text, the choices, the label),
  offline; run at batch sizes 32 and 64 and its faster one kept (it batches requests, i.e.
  (context, choice) pairs);
- raylsl: `raylsl.objective.evaluate` with a fresh objective (so its tokenization and its one-time
  agreement check are timed too), 32 examples per batch.
Both score the sum of the choice tokens' log-probabilities after the context plus " " (``acc``)
and that sum divided by the choice's length (``acc_norm``); raylsl's token budget is set so that
nothing is truncated, as lm-eval truncates nothing here. Wall time is the whole evaluation call
(building requests, tokenizing, forward passes, metrics), median of ``--repeats``. Writes
``benchmarks/eval_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).with_suffix(".json")
MAX_LENGTH = 1024


def _task_yaml(name: str, data_file: Path) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
            "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\ntarget_delimiter: \" \"\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def run_lm_eval(model, tokenizer, name: str, task_dir: Path, batch_size: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=[name], task_manager=TaskManager(include_path=str(task_dir)),
                          log_samples=False, verbosity="ERROR")
    seconds = time.perf_counter() - started
    metrics = out["results"][name]
    return {"seconds": seconds, "acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"]}


def run_raylsl(model, tokenizer, examples: list) -> dict:
    from raylsl.objective import DecoderMC, evaluate

    started = time.perf_counter()
    metrics = evaluate(model, DecoderMC(tokenizer, MAX_LENGTH), examples, batch_size=32)
    return {"seconds": time.perf_counter() - started, "acc": metrics["acc"], "acc_norm": metrics["acc_norm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sarcasm", "quartz"])
    parser.add_argument("--n", type=int, default=500, help="test examples per task")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    logging.disable(logging.WARNING)
    import torch

    from raylsl.config import DataSettings, TaskSettings
    from raylsl.data import load_task
    from raylsl.models import resolve_model

    model, tokenizer = resolve_model("smollm2-135m").load()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            test = load_task(TaskSettings(name=task), DataSettings(test_size=args.n, val_size=10)).test
            data_file = Path(tmp) / f"{task}.jsonl"
            data_file.write_text("".join(json.dumps({"context": ex.context, "choices": list(ex.choices),
                                                     "label": ex.label}) + "\n" for ex in test))
            name = f"raylsl_bench_{task}"
            (Path(tmp) / f"{name}.yaml").write_text(_task_yaml(name, data_file))
            runs: dict[str, list[dict]] = {"lm-eval bs32": [], "lm-eval bs64": [], "raylsl": []}
            for repeat in range(args.repeats):
                for tool in runs:
                    with torch.no_grad():
                        result = (run_raylsl(model, tokenizer, test) if tool == "raylsl" else
                                  run_lm_eval(model, tokenizer, name, Path(tmp), int(tool[-2:])))
                    runs[tool].append(result)
                    print(f"{task} {tool} run {repeat + 1}: {result['seconds']:.1f} s acc {result['acc']:.4f} "
                          f"acc_norm {result['acc_norm']:.4f}", file=sys.stderr, flush=True)
            median = {tool: statistics.median(r["seconds"] for r in results) for tool, results in runs.items()}
            peer = min(("lm-eval bs32", "lm-eval bs64"), key=median.get)
            same = all(runs[peer][0][m] == runs["raylsl"][0][m] for m in ("acc", "acc_norm"))
            rows[task] = {"n": len(test), "runs": runs, "median_s": median, "peer": peer,
                          "time_ratio": median["raylsl"] / median[peer],
                          "time_ratios": [r["seconds"] / p["seconds"] for r, p in zip(runs["raylsl"], runs[peer])],
                          "identical_metrics": same}
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(f"\nraylsl eval vs lm-evaluation-harness, SmolLM2-135M, median of {args.repeats} runs, device {device}")
    print(f"{'task':<9} {'n':>4} {'lm-eval s':>10} {'raylsl s':>9} {'time ratio':>16} {'acc (both)':>10} "
          f"{'acc_norm (both)':>15} {'identical':>9}")
    for task, row in rows.items():
        r = row["runs"]["raylsl"][0]
        spread = f"{row['time_ratio']:.2f} ({min(row['time_ratios']):.2f}-{max(row['time_ratios']):.2f})"
        print(f"{task:<9} {row['n']:>4} {row['median_s'][row['peer']]:>10.1f} {row['median_s']['raylsl']:>9.1f} "
              f"{spread:>16} {r['acc']:>10.4f} {r['acc_norm']:>15.4f} {str(row['identical_metrics']):>9}")
    OUT.write_text(json.dumps({"repeats": args.repeats, "device": device, "rows": rows}, indent=2))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
