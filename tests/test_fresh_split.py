"""`run NOTEBOOK` skips the split of an unchanged notebook, and only then (fresh_split)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from nb2prod import fresh_split
from nb2prod.cli.common import open_pipeline
from nb2prod.split import split_notebook


def _notebook(folder: Path) -> Path:
    """A notebook importing a local module, as real ones do."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import helpers", metadata={"tags": ["imports"]}),
                nbformat.v4.new_code_cell("value = helpers.VALUE * 2",
                                          metadata={"tags": ["train"]})]
    path = folder / "model.ipynb"
    nbformat.write(nb, path)
    (folder / "helpers.py").write_text("VALUE = 1\n")
    return path


def _open(notebook: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """open_pipeline as `run NOTEBOOK` calls it; what it said on stderr."""
    capsys.readouterr()
    pipeline = open_pipeline(notebook)
    assert pipeline.root == notebook.parent / "model-pipeline"
    return capsys.readouterr().err


def test_an_unchanged_notebook_is_not_split_again(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    notebook = _notebook(tmp_path)
    assert "split " in _open(notebook, capsys)
    record = tmp_path / "model-pipeline" / "nb2prod.split.json"
    before = record.stat().st_mtime_ns
    said = _open(notebook, capsys)
    assert "is up to date with" in said and "split " not in said
    assert record.stat().st_mtime_ns == before


def _edit_notebook(folder: Path) -> None:
    path = folder / "model.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "value = helpers.VALUE * 3"
    nbformat.write(nb, path)


def _edit_module(folder: Path) -> None:
    path = folder / "helpers.py"
    path.write_text("VALUE = 2  # edited\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))


def _settings(folder: Path) -> None:
    (folder / "nb2prod.ini").write_text("[requirements]\nEXTRA = requests\n")


def _delete_generated(folder: Path) -> None:
    (folder / "model-pipeline" / "stage-1-train" / "config.ini").unlink()


def _split_directly(folder: Path) -> None:
    """`nb2prod split` (or JupyterLab) in between: the pipeline is not what `run` saw."""
    split_notebook(folder / "model.ipynb", folder / "model-pipeline", force=True)


CHANGES: dict[str, Callable[[Path], None]] = {
    "notebook edited": _edit_notebook, "local module edited": _edit_module,
    "nb2prod.ini beside it": _settings, "generated file deleted": _delete_generated,
    "split by other means": _split_directly,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_whatever_a_split_reads_makes_run_split_again(
        change: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook = _notebook(tmp_path)
    _open(notebook, capsys)
    CHANGES[change](tmp_path)
    assert "split " in _open(notebook, capsys)
    stage = tmp_path / "model-pipeline" / "stage-1-train"
    assert (stage / "config.ini").is_file()
    if change == "local module edited":  # the stage runs the new code
        assert (stage / "helpers.py").read_text() == "VALUE = 2  # edited\n"
    assert "is up to date with" in _open(notebook, capsys)  # and fresh again after it


def test_an_install_into_site_packages_makes_run_split_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pins in requirements.txt follow what is installed."""
    site = tmp_path / "env" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    notebook = _notebook(tmp_path)
    _open(notebook, capsys)
    assert "is up to date with" in _open(notebook, capsys)
    (site / "newpkg-1.0.dist-info").mkdir()
    os.utime(site, ns=(site.stat().st_atime_ns, site.stat().st_mtime_ns + 10**9))
    assert "split " in _open(notebook, capsys)


def test_a_split_that_dies_while_writing_leaves_no_fingerprint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint goes before a split writes and comes back only after it succeeded."""
    notebook = _notebook(tmp_path)
    _open(notebook, capsys)
    output = tmp_path / "model-pipeline"
    assert (output / fresh_split.FINGERPRINT_FILE).is_file()
    _edit_notebook(tmp_path)

    def dies(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C in the middle of writing would

    monkeypatch.setattr("nb2prod.split.writer.write", dies)
    with pytest.raises(KeyboardInterrupt):
        open_pipeline(notebook)
    assert not (output / fresh_split.FINGERPRINT_FILE).exists()
    monkeypatch.undo()
    assert "split " in _open(notebook, capsys)
    assert "* 3" in (output / "stage-1-train" / "train.ipynb").read_text()
