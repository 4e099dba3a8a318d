import os
import sys

import pytest
import torch
from recbole.data.interaction import Interaction

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(TESTS_DIR, "data")
TINY_YAML = os.path.join(DATA_DIR, "tiny.yaml")


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """Each test runs in its own folder (RecBole writes log/ and log_tensorboard/ to the working
    directory) and with a bare sys.argv (RecBole's Config reads --key=value from it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])


@pytest.fixture
def tiny(tmp_path):
    """Config arguments for the tiny dataset, checkpoints under the test's folder."""
    return {
        "dataset": "tiny",
        "config_file_list": [TINY_YAML],
        "config_dict": {"data_path": DATA_DIR, "checkpoint_dir": str(tmp_path / "saved")},
    }


def full_and_pointwise_scores(model, users):
    """``(full_sort_predict, predict)`` of ``model`` for ``users`` against every item, each
    ``[len(users), n_items]``: the two scoring paths a model must agree on."""
    with torch.no_grad():
        full = model.full_sort_predict(Interaction({"user_id": users})).view(len(users), -1)
        items = torch.arange(model.n_items)
        pairs = Interaction({"user_id": users.repeat_interleave(len(items)), "item_id": items.repeat(len(users))})
        return full, model.predict(pairs).view(len(users), -1)
