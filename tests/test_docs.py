"""The README and docs/ as a user reads them: generated pages current, every `raylsl ...` command
they show parses and loads its config (nothing trained: commands that need a cluster or a GPU are
checked the same way), and every relative link and image resolves."""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from raylsl.cli import check
from raylsl.errors import RaylslError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "cluster" / "README.md"]
sys.path.insert(0, str(ROOT / "docs"))
import generate  # noqa: E402  (docs/generate.py: not a package)


def test_generated_docs_are_current():
    assert generate.stale() == [], "regenerate them: python docs/generate.py (or make docs)"


def test_generate_check_names_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "DOCS", tmp_path)
    (tmp_path / "results.md").write_text("# Measured results\n")
    monkeypatch.setattr(generate, "GENERATED", {"results.md": functools.partial(generate.measured, "results.md"),
                                                 "cli.md": generate.cli})
    assert generate.main(["--check"]) == 1
    assert "docs/cli.md is stale" in capsys.readouterr().err
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0


def test_a_missing_benchmark_json_gives_a_note_not_an_error(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tables import TABLES, render

    (tmp_path / "selective_cost.json").write_text('{"model": "x"}')
    for name in TABLES:
        lines = render(name, tmp_path)
        assert len(lines) == 1 and lines[0].startswith("_Not measured yet: `benchmarks/"), name


SYNOPSIS = re.compile(r"[\[|]|\b[A-Z][A-Z_.]*\b")
"""An inline span with an option in brackets, alternatives or an ALL-CAPS placeholder is a synopsis
(`raylsl export RUN --format peft|padded|merged`), not a command to run."""


def commands(text: str) -> list[str]:
    """The `raylsl ...` commands of a Markdown page: every line of its shell code blocks that runs
    raylsl (continuations joined, comments dropped, `python -m raylsl` included), and every inline
    code span that is a whole command rather than a synopsis."""
    found, fenced, shell = [], False, False
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            shell = fenced and line[3:].strip() in ("", "bash", "sh", "console")
            continue
        line = line.split(" #")[0].strip()
        at = re.match(r"(?:.*python -m )?raylsl (?=[a-z])", line) if shell else None
        if at:
            found.append("raylsl " + line[at.end():])
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span for span in re.findall(r"`(raylsl [a-z-]+ [^`]+)`", prose) if not SYNOPSIS.search(span[7:])]
    return found


CASES = [(page.relative_to(ROOT).as_posix(), cmd) for page in PAGES for cmd in commands(page.read_text())]


def test_the_docs_show_commands():
    assert len(CASES) > 40


@pytest.mark.parametrize("page, command", CASES)
def test_every_command_in_the_docs_parses_and_loads_its_config(page, command, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands name configs/ and search_spaces/ from the checkout's root
    argv = [arg for arg in shlex.split(command)[1:] if arg not in ("&", "...")]
    try:
        check(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")
    except RaylslError as exc:
        pytest.fail(f"{page}: `{command}`: {exc}")


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = [target for target in LINK.findall(text)
              if not re.match(r"[a-z]+:|#", target) and not (page.parent / target.split("#")[0]).exists()]
    assert broken == [], f"{page.name}: links to nothing: {broken}"


def test_generate_check_is_one_command():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_the_reproduce_tables_agree_with_the_grid_scripts_own_verdicts():
    """The generated reproduce tables read the per-configuration files; their differences to all
    blocks must be the ones `reproduce.py --table` wrote into its verdict file for the same budget."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tables import render

    lines = render("reproduce_encoder_gpu")
    claims = json.loads((ROOT / "benchmarks" / "reproduce" / "gpu-long.json").read_text())["claims"]
    for arm, claim in (("CKA 50%", claims[0]), ("activation 50%", claims[1])):
        row = next(line for line in lines if line.startswith(f"| {arm} |"))
        c = claim["comparisons"][0]
        assert row.endswith(f"| {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] |"), (row, c)
    assert sum(line.startswith("| ") for line in lines) == 1 + 9  # the header and nine arms
