import os
import stat

import pytest
import torch

from recbole_endo import Config
from recbole_endo.files import open_replacing
from recbole_endo.quick_start import build


def test_failure_while_writing_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "table.md"
    with open_replacing(path) as file:
        file.write("old\n")
    with pytest.raises(OSError, match="disk full"):
        with open_replacing(path) as file:
            file.write("half of the new")
            raise OSError("disk full")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["table.md"]


def test_file_is_created_as_open_creates_it(tmp_path):
    with open(tmp_path / "plain", "w") as file:
        file.write("x")
    with open_replacing(tmp_path / "replaced") as file:
        file.write("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "replaced").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)  # not mkstemp's private 0o600


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tiny, monkeypatch):
    _, _, trainer, _ = build(Config(model="BPR", **tiny))
    trainer._save_checkpoint(0)
    with open(trainer.saved_model_file, "rb") as file:
        previous = file.read()

    def disk_full(state, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        trainer._save_checkpoint(1)
    with open(trainer.saved_model_file, "rb") as file:
        assert file.read() == previous
    assert os.listdir(os.path.dirname(trainer.saved_model_file)) == [os.path.basename(trainer.saved_model_file)]
