"""Command line: ``raylsl train``, ``select``, ``estimate``, ``eval``, ``export``, ``upload-model``,
``sweep``, ``report`` and ``recommend``.

Each command maps to a plain function in `raylsl.recipes`. Positional arguments are an optional
YAML config (or run directory) followed by ``key=value`` overrides (``lora.r=16 layers=15-29``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from raylsl.errors import RaylslError, RaylslWarning

NO_CACHE_HELP = "compute block scores afresh: neither read nor write the score cache"


def _no_cache(args: argparse.Namespace) -> dict[str, bool]:
    """The run-config override ``--no-cache`` stands for."""
    return {"score_cache": False} if args.no_cache else {}


def _no_break_lease(args: argparse.Namespace) -> None:
    """Refuses --break-lease without --resume (a new run or sweep has no lease to break)."""
    if args.break_lease:
        raise RaylslError("--break-lease goes with --resume: it takes over the lease of a run or sweep whose holder "
                          "stopped renewing it")


def _split_positionals(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _train_config(args: argparse.Namespace):
    """The run config ``raylsl train`` trains, or None with --resume (the run directory holds it)."""
    from raylsl.config import SMOKE_OVERRIDES
    from raylsl.plan import load_run_config

    source, overrides = _split_positionals(args.items)
    if args.resume:
        if source or overrides:
            raise RaylslError("--resume takes the run directory alone; its config.yaml already holds the settings")
        return None
    _no_break_lease(args)
    extra = {**(SMOKE_OVERRIDES if args.smoke else {}), **_no_cache(args)}
    if args.layers is not None:
        overrides = overrides + [f"layers={args.layers}"]
    return load_run_config(source, [f"{k}={v}" for k, v in extra.items()] + overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from raylsl.recipes import train as recipe
    from raylsl.results import summary

    config = _train_config(args)
    if config is None:
        results = recipe.resume(args.resume, progress=not args.no_progress, break_lease=args.break_lease)
    else:
        results = recipe.train(config, progress=not args.no_progress)
    print(summary(results))
    return 0


def _select_config(args: argparse.Namespace):
    from raylsl.plan import load_run_config

    source, overrides = _split_positionals(args.items)
    flags = {"model": args.model, "task": args.task, "selector": args.selector, "n": args.n}
    overrides = [f"{k}={v}" for k, v in {**flags, **_no_cache(args)}.items() if v is not None] + overrides
    return load_run_config(source, overrides)


def cmd_select(args: argparse.Namespace) -> int:
    from raylsl.recipes import select as recipe

    selection, run_dir = recipe.select(_select_config(args))
    print(recipe.summary(selection, run_dir))
    return 0


def _estimate_config(args: argparse.Namespace):
    from raylsl.plan import load_run_config

    return load_run_config(*_split_positionals(args.items))


def cmd_estimate(args: argparse.Namespace) -> int:
    from raylsl.recipes import estimate as recipe

    found = recipe.estimate_run(_estimate_config(args), args.gpus, args.gpu_memory, args.target_tokens)
    print(json.dumps(found.to_dict(), indent=2) if args.json else recipe.table(found))
    return 0


def _eval_config(args: argparse.Namespace):
    """The config ``raylsl eval`` evaluates a base model with, or None for a run (its directory or
    storage URI holds the config)."""
    from raylsl.plan import load_run_config
    from raylsl.storage import is_remote

    target, overrides = _split_positionals(args.items)
    if target is not None and (is_remote(target) or not target.endswith((".yaml", ".yml"))):
        return None
    return load_run_config(target, overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from raylsl.recipes.evaluate import evaluate_target

    target, overrides = _split_positionals(args.items)
    print(json.dumps(evaluate_target(target, overrides, args.split, args.samples), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from raylsl.recipes.export import export_run

    print(export_run(args.run_dir, args.format, args.out))
    return 0


def cmd_upload_model(args: argparse.Namespace) -> int:
    from raylsl.recipes.upload import upload_model

    uri, sent = upload_model(args.directory, args.uri)
    done = f"uploaded {sent / 1e6:,.1f} MB" if sent else "already in storage: nothing uploaded"
    print(f"{uri}  ({done})\ntrain with: model={uri}")
    return 0


def _sweep_source(args: argparse.Namespace) -> tuple[str, list[str]] | None:
    """The search space file and run-config overrides ``raylsl sweep`` starts, or None with --resume."""
    source, overrides = _split_positionals(args.items)
    if args.resume:
        if source or overrides:
            raise RaylslError("--resume takes the sweep directory alone; its sweep.json already holds the settings")
        return None
    _no_break_lease(args)
    if source is None:
        raise RaylslError("give a search space file, e.g. `raylsl sweep search_spaces/default.yaml`")
    return source, overrides


def _sweep_space(args: argparse.Namespace):
    """The search space ``raylsl sweep`` reads before it starts Ray, checked against the run config
    as `raylsl.sweep.run.sweep` checks it (every parameter value makes a valid run); None with --resume."""
    from raylsl.config import SMOKE_OVERRIDES, parse_overrides
    from raylsl.sweep.space import check_against_config, load_space

    found = _sweep_source(args)
    if found is None:
        return None
    space = load_space(found[0])
    check_against_config(space, {**space.fixed, **parse_overrides(found[1]), **(SMOKE_OVERRIDES if args.smoke else {})})
    return space


def cmd_sweep(args: argparse.Namespace) -> int:
    from raylsl.config import parse_overrides

    run = _sweep_module()
    found = _sweep_source(args)
    if found is None:
        report = run.resume_sweep(args.resume, progress=not args.no_progress, break_lease=args.break_lease)
    else:
        source, overrides = found
        overrides = parse_overrides(overrides)
        # a trial's runs live in the sweep directory: output_dir=X says where that directory goes
        output_dir = overrides.pop("output_dir", None)
        if output_dir is not None and args.output_dir is not None and str(output_dir) != args.output_dir:
            raise RaylslError(f"output_dir={output_dir} and --output-dir {args.output_dir} disagree: give one")
        report = run.sweep(source, {**overrides, **_no_cache(args)}, trials=args.trials,
                           concurrency=args.concurrency, workers_per_trial=args.workers_per_trial, smoke=args.smoke,
                           output_dir=args.output_dir or output_dir or "runs", name=args.name,
                           progress=not args.no_progress, scheduler=args.scheduler)
    _print_report(report)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from raylsl import report as reports

    report = reports.load(args.run_dir, args.objectives)
    if report.complete and not args.no_test:  # a running or interrupted sweep's front is provisional
        report = reports.load(_sweep_module().evaluate_front(report).run_dir, args.objectives)
    report.write()
    _print_report(report)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from raylsl import report as reports

    found = reports.load(args.run_dir).recommend(eps=args.eps, cost=args.cost)
    print(json.dumps(found, indent=2, default=str) if args.json else found["text"])
    return 0


def _sweep_module():
    try:
        from raylsl.sweep import run
    except ModuleNotFoundError as exc:
        raise RaylslError(f"sweeps need Ray Tune and Optuna ({exc.name} is missing): "
                          f"pip install 'raylsl[sweep]'") from None
    return run


def _print_report(report) -> None:
    from raylsl.report import INFEASIBLE, STOPPED

    trials = report.trials
    failed = trials[~trials["status"].isin(["TERMINATED", STOPPED, INFEASIBLE])]
    stopped = int((trials["status"] == STOPPED).sum())
    infeasible = trials[trials["status"] == INFEASIBLE]
    print(report.recommend()["text"] + "\n")
    print(report.front_table())
    print(f"{len(trials)} trials, {len(failed)} failed or unfinished" + (f", {stopped} stopped early" if stopped else "")
          + (f", {len(infeasible)} cannot fit (not run)" if len(infeasible) else "")
          + f"; front: {len(report.pareto_front())} trials")
    for row in (*failed.itertuples(), *infeasible.itertuples()):
        print(f"  {row.trial_id} {row.status}: {row.error}")
    print(f"report: {report.run_dir / 'pareto.md'}, {report.run_dir / 'pareto.csv'}, {report.run_dir / 'pareto.png'}")
    if not report.complete:
        print(f"the sweep stopped before its {report.planned} trials finished; continue it with "
              f"`raylsl sweep --resume {report.run_dir}`")


def build_parser() -> argparse.ArgumentParser:
    from raylsl.lease import STALE_AFTER_S

    parser = argparse.ArgumentParser(prog="raylsl", description="Layer-selective LoRA fine-tuning.")
    break_lease = (f"with --resume: take over the lease of a process that stopped renewing it for "
                   f"{STALE_AFTER_S / 60:.0f} min (killed, or its machine lost)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune with LoRA on chosen blocks, evaluate before/after")
    train.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [KEY=VALUE ...]",
                       help="optional YAML config, then overrides such as lora.r=16 task=quartz")
    train.add_argument("--layers", help="blocks to adapt: all, 15-29, 0,3,7 (same as layers=...)")
    train.add_argument("--smoke", action="store_true", help="a few steps on a few examples, end to end")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    train.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)
    train.add_argument("--break-lease", action="store_true", help=break_lease)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    select = sub.add_parser("select", help="score the blocks and choose which to adapt (no training)")
    select.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [KEY=VALUE ...]",
                        help="optional YAML config, then overrides such as cka.pooling=mean calibration.size=64")
    select.add_argument("--model", help="model name (same as model=...)")
    select.add_argument("--task", help="task name or file (same as task=...)")
    select.add_argument("--selector", help="selector name (same as selector=...)")
    select.add_argument("--n", help="block count (15) or fraction (0.5) (same as n=...)")
    select.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)
    select.set_defaults(func=cmd_select)

    estimate = sub.add_parser("estimate", help="memory a run needs per GPU, from the model's config alone (no "
                                               "weights, offline): every ZeRO stage, 4-bit, checkpointing")
    estimate.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [KEY=VALUE ...]",
                          help="the run's config and overrides, as for train (model=llama-3.1-8b data.max_length=2048)")
    estimate.add_argument("--gpus", type=int, help="data-parallel GPUs (ZeRO partitions over them; default: workers)")
    estimate.add_argument("--gpu-memory", help="memory of each GPU, e.g. 80GB (default: gpu_memory=, else this "
                                               "machine's GPU, else its available memory)")
    estimate.add_argument("--target-tokens", type=int, help="positions per sequence the LM head and loss run on "
                                                            "(default: all for generative tasks, 8 for multiple choice)")
    estimate.add_argument("--json", action="store_true", help="the same as JSON (every term in bytes)")
    estimate.set_defaults(func=cmd_estimate)

    evaluate = sub.add_parser("eval", help="test accuracy of a run's adapter or of a base model")
    evaluate.add_argument("items", nargs="*", metavar="[RUN_DIR|CONFIG.yaml] [KEY=VALUE ...]")
    evaluate.add_argument("--split", default="test", help="test (default) or validation")
    evaluate.add_argument("--samples", type=int, default=0, metavar="N",
                          help="generative tasks: write the first N examples' generations, extracted answers and "
                               "references to samples_SPLIT.jsonl in the run (or the working directory)")
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="a run's adapter as a server loads it: peft, padded or merged")
    export.add_argument("run_dir", metavar="RUN_DIR", help="the run's directory or storage URI")
    export.add_argument("--format", required=True, metavar="peft|padded|merged",
                        help="peft: as saved (peft, vLLM); padded: zero weights in the blocks not chosen, no layer "
                             "fields (TGI, LoRAX); merged: the base with the adapter merged in (servers without "
                             "LoRA, llama.cpp's GGUF conversion, encoders)")
    export.add_argument("--out", metavar="DIR", help="a new directory or storage URI (default: RUN_DIR/export/FORMAT)")
    export.set_defaults(func=cmd_export)

    upload = sub.add_parser("upload-model", help="a local model directory into storage (content-addressed: the same "
                                                 "weights are uploaded once); prints the model=URI runs use")
    upload.add_argument("directory", metavar="DIR", help="the model directory (config.json, weights, tokenizer)")
    upload.add_argument("uri", metavar="URI", help="where models are kept: s3://bucket/models, gs://..., or a path "
                                                  "every node mounts; the model goes to URI/DIGEST")
    upload.set_defaults(func=cmd_upload_model)

    sweep = sub.add_parser("sweep", help="Ray Tune + Optuna sweep: accuracy vs trainable parameters")
    sweep.add_argument("items", nargs="*", metavar="SPACE.yaml [KEY=VALUE ...]",
                       help="a search space file (search_spaces/), then run-config overrides for every trial")
    sweep.add_argument("--trials", type=int, help="number of trials (default: the space file's)")
    sweep.add_argument("--concurrency", type=int, help="trials at once (default: the space file's)")
    sweep.add_argument("--workers-per-trial", type=int, help="0: train in the trial's process; N: N Ray Train workers")
    sweep.add_argument("--scheduler", help="none, or pareto_halving: stop trials dominated at a rung (default: the "
                                           "space file's)")
    sweep.add_argument("--smoke", action="store_true", help="3 tiny trials: checks the whole path quickly")
    sweep.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep")
    sweep.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)
    sweep.add_argument("--break-lease", action="store_true", help=break_lease)
    sweep.add_argument("--output-dir", help="where the sweep directory goes (default: runs; output_dir=DIR says the same)")
    sweep.add_argument("--name", help="sweep directory name (default: sweep-SPACE-TIME)")
    sweep.add_argument("--no-progress", action="store_true", help="no live trial table")
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="Pareto report of a sweep: pareto.csv, pareto.md, pareto.png")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--no-test", action="store_true", help="do not evaluate front members on the test split")
    report.add_argument("--objectives", metavar="A,B[,C]",
                        help="re-cut the front on 2 or 3 recorded columns, e.g. val_acc,peak_memory,step_time "
                             "(default: the sweep's own objectives); nothing is trained")
    report.set_defaults(func=cmd_report)

    recommend = sub.add_parser("recommend", help="which blocks to train: the cheapest trial within eps of all blocks")
    recommend.add_argument("run_dir", metavar="RUN_DIR", help="a sweep's directory or storage URI")
    recommend.add_argument("--cost", default="trainable_params",
                           help="the cost to minimise: trainable_params (default), peak_memory, step_time, "
                                "estimated_memory, or tokens_per_second (maximised)")
    recommend.add_argument("--eps", type=float, default=0.01,
                           help="how far below all blocks' validation metric a pick may be (default 0.01)")
    recommend.add_argument("--json", action="store_true", help="the whole recommendation as JSON")
    recommend.set_defaults(func=cmd_recommend)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as `main` reads it: the subcommand's arguments, with ``key=value``
    overrides gathered into ``items`` wherever they sit (``train x.yaml --smoke lora.r=4``).

    Raises:
        SystemExit: argparse's exit (status 2) on an unknown option or a missing argument.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not hasattr(args, "items") and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.items = getattr(args, "items", []) + extra
    return args


CONFIG_LOADERS = {"train": _train_config, "select": _select_config, "estimate": _estimate_config,
                  "eval": _eval_config, "sweep": _sweep_space}
"""What each command reads and checks before it starts anything: its run config or search space."""


def check(argv: list[str]) -> object:
    """Parses a command line and loads the config it names, as the command does before it starts
    Ray, loads a model or reads data; nothing is run or written (what the docs test runs on every
    command the docs show).

    Returns:
        The command's `RunConfig` or `SearchSpace`; None for a command that reads no config
        (export, upload-model, report) or reads it from a run directory (``--resume``, eval RUN_DIR).

    Raises:
        SystemExit: argparse's exit on a malformed command line.
        RaylslError: a config error, naming the key (``ConfigError`` is one).
    """
    args = parse(argv)
    loader = CONFIG_LOADERS.get(args.command)
    return loader(args) if loader else None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except RaylslError as exc:
        print(f"raylsl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "sweep" if args.command == "sweep" else "train"
        print(f"raylsl: interrupted; resume with `raylsl {again} --resume RUN_DIR`", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Library chatter (load reports, deprecations) buries raylsl's own messages."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=RaylslWarning)  # raylsl's own notes about a run stay visible
    plain = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest: (
        f"{message}\n" if issubclass(category, RaylslWarning) else plain(message, category, *rest))
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
