"""Sweeps: Ray Tune + Optuna over selector, block budget, LoRA rank and IST's mu/beta.

`raylsl.sweep.space` reads search space files; `raylsl.sweep.run.sweep` runs one (it needs the
``sweep`` extra: Ray Tune and Optuna); its Pareto report is `raylsl.report`.
"""
