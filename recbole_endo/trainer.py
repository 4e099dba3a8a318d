"""Trainers of the plugin's models, by model name (RecBole's ``<Model>Trainer`` convention), and
the checkpoint writer that lets torch's safe loader read RecBole's checkpoints back.
"""

import math
import os
import tempfile
from collections import defaultdict

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_endo.model import MODELS


class FeatureTowerTrainer(Trainer):
    """RecBole's Trainer that also logs, every epoch, the batch mean of each loss component the
    model reports in ``model.loss_components`` (text log and TensorBoard, ``Loss/<name>``), and
    fails naming the component when one is not finite. ``loss_component_history`` maps each
    epoch to those means."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.loss_component_history = {}

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_func = loss_func or self.model.calculate_loss
        sums, batches = defaultdict(float), 0

        def loss_with_components(interaction):
            nonlocal batches
            loss = loss_func(interaction)
            for name, value in self.model.loss_components.items():
                if not math.isfinite(value):
                    raise ValueError(f"loss component '{name}' is {value} at epoch {epoch_idx}, batch {batches}")
                sums[name] += value
            batches += 1
            return loss

        total_loss = super()._train_epoch(train_data, epoch_idx, loss_with_components, show_progress)
        means = {name: value / max(batches, 1) for name, value in sums.items()}
        self.logger.info(
            set_color(f"epoch {epoch_idx} loss components", "blue")
            + ": " + ", ".join(f"{name}={value:.4f}" for name, value in means.items())
        )
        for name, value in means.items():
            self.tensorboard.add_scalar(f"Loss/{name}", value, epoch_idx)
        self.loss_component_history[epoch_idx] = means
        return total_loss


TRAINERS = dict.fromkeys(MODELS, FeatureTowerTrainer)


def save_checkpoint(trainer, epoch, verbose=True, **kwargs):
    """RecBole's ``Trainer._save_checkpoint``, readable with ``weights_only=True`` and atomic.

    RecBole saves with pickle protocol 4, whose FRAME opcode torch's safe unpickler rejects, so
    RecBole cannot reload its own best checkpoint on torch >= 2.6. This writes the same state with
    torch's default protocol (the config pickles as plain data, see ``recbole_endo.config``), to a
    temporary file renamed over the target, so a crash never leaves a truncated checkpoint.
    """
    if not trainer.config["single_spec"] and trainer.config["local_rank"] != 0:
        return
    saved_model_file = kwargs.pop("saved_model_file", trainer.saved_model_file)
    state = {
        "config": trainer.config,
        "epoch": epoch,
        "cur_step": trainer.cur_step,
        "best_valid_score": float(trainer.best_valid_score),
        "state_dict": trainer.model.state_dict(),
        "other_parameter": trainer.model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
    }
    directory = os.path.dirname(os.path.abspath(saved_model_file))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            torch.save(state, tmp_file)
        os.replace(tmp_path, saved_model_file)
    except BaseException:
        os.unlink(tmp_path)
        raise
    if verbose:
        trainer.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


def enable_safe_checkpoints():
    Trainer._save_checkpoint = save_checkpoint
