"""``raylsl export``: a run's adapter in the form a server loads (`raylsl.export`), read from the
run's directory or its storage URI, written locally or to storage."""

from __future__ import annotations

import tempfile
from pathlib import Path

from raylsl.errors import ConfigError
from raylsl.export import FORMATS, export_adapter
from raylsl.models import resolve_model
from raylsl.plan import load_run_config
from raylsl.recipes.evaluate import finished_run_config
from raylsl.storage import Storage, is_remote


def export_run(target: str | Path, form: str, out: str | Path | None = None) -> str:
    """Exports the adapter of the run in ``target`` as ``form``.

    Args:
        target: the run's directory or storage URI (what ``raylsl train`` printed).
        form: peft, padded or merged (`raylsl.export`).
        out: a local directory or storage URI that does not exist yet; default ``export/FORM``
            inside the run (in its storage when ``target`` is a URI).

    Returns:
        Where the export was written.

    Raises:
        RaylslError: an unknown form, a run without a finished adapter, an existing destination,
            or a base model that cannot be loaded; nothing is written then.
    """
    if form not in FORMATS:
        raise ConfigError(f"--format {form!r}: choose one of {', '.join(FORMATS)}")
    run = Storage(target)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        config = load_run_config(finished_run_config(run, scratch))
        adapter = run.local / "adapter" if run.local is not None else run.download("adapter", scratch / "adapter")
        destination = str(out) if out is not None else run.uri_of(f"export/{form}")
        spec = resolve_model(config.model.name, config.model.kind)
        if not is_remote(destination):
            export_adapter(adapter, form, Path(destination), spec, config.model.weights)
            return destination
        storage = Storage(destination)
        if storage.exists():
            raise ConfigError(f"{destination} already exists; remove it or choose another --out")
        # Uploaded only once the export is whole: a failure before leaves nothing in storage.
        storage.upload(export_adapter(adapter, form, scratch / "export", spec, config.model.weights), "")
    return destination
