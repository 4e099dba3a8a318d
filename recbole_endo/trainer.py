"""Trainers of the plugin's models, by model name (RecBole's ``<Model>Trainer`` convention), and
the checkpoint writer and reader that let torch's safe loader read RecBole's checkpoints back and
let a resumed run continue exactly where the checkpoint left off.
"""

import math
import random

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.parallel import DistributedDataParallel

from recbole_endo.files import open_replacing
from recbole_endo.model import MODELS


class FeatureTowerTrainer(Trainer):
    """RecBole's Trainer that also logs, every epoch, the batch mean of each loss component the
    model reports in ``model.loss_components`` (text log and TensorBoard, ``Loss/<name>``), and
    fails naming the component when one is not finite. ``loss_component_history`` maps each
    epoch to those means. Under DDP each process averages its own share of the batches, and
    rank 0's means are logged, as RecBole logs rank 0's training loss: they are not all-reduced.

    The components (floats or tensors) are summed where they are, on the model's device, and read
    once per epoch, so they add no wait for the device to each batch. When a batch's loss is not
    finite the batch's components are read to name the culprit (RecBole reads the loss right
    after, so this check adds no wait either); a component outside the loss (``cos_min``) that is
    not finite is named at the end of its epoch."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.loss_component_history = {}

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_func = loss_func or self.model.calculate_loss
        sums, batches = {}, 0

        def loss_with_components(interaction):
            nonlocal batches
            loss = loss_func(interaction)
            components = self.model.loss_components
            for name, value in components.items():
                value = value.detach().double() if torch.is_tensor(value) else float(value)
                sums[name] = sums[name] + value if name in sums else value
            if torch.is_tensor(loss) and not torch.isfinite(loss.detach()).all():
                check_finite(components, f"at epoch {epoch_idx}, batch {batches}")
            batches += 1
            return loss

        total_loss = super()._train_epoch(train_data, epoch_idx, loss_with_components, show_progress)
        check_finite(sums, f"in epoch {epoch_idx}")
        means = {name: float(value) / max(batches, 1) for name, value in sums.items()}
        self.logger.info(
            set_color(f"epoch {epoch_idx} loss components", "blue")
            + ": " + ", ".join(f"{name}={value:.4f}" for name, value in means.items())
        )
        for name, value in means.items():
            self.tensorboard.add_scalar(f"Loss/{name}", value, epoch_idx)
        self.loss_component_history[epoch_idx] = means
        return total_loss


def check_finite(components, where):
    """Fail naming the first of ``components`` (name → float or tensor) that is not finite."""
    for name, value in components.items():
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"loss component '{name}' is {value} {where}")


TRAINERS = dict.fromkeys(MODELS, FeatureTowerTrainer)


def save_checkpoint(trainer, epoch, verbose=True, **kwargs):
    """RecBole's ``Trainer._save_checkpoint``, readable with ``weights_only=True`` and atomic.

    RecBole saves with pickle protocol 4, whose FRAME opcode torch's safe unpickler rejects, so
    RecBole cannot reload its own best checkpoint on torch >= 2.6. This writes the same state with
    torch's default protocol (the config pickles as plain data, see ``recbole_endo.config``), to a
    temporary file renamed over the target, so a crash never leaves a truncated checkpoint. It
    also holds what :func:`resume_checkpoint` needs to continue the run exactly: the best
    validation result, the loss history and the random state.
    Under DDP rank 0 writes it.
    """
    distributed = not trainer.config["single_spec"]
    if not distributed or trainer.config["local_rank"] == 0:
        write_checkpoint(trainer, epoch, verbose, **kwargs)
    if distributed:
        # Every rank loads the best checkpoint to test: none may read it before rank 0 wrote it.
        torch.distributed.barrier()


def write_checkpoint(trainer, epoch, verbose=True, **kwargs):
    saved_model_file = kwargs.pop("saved_model_file", trainer.saved_model_file)
    # fit writes an improved epoch's checkpoint before it records that epoch's result as the best:
    # the best result is the one valid_epoch has just kept.
    best_valid_result = getattr(trainer, "valid_result", trainer.best_valid_result)
    state = {
        "config": trainer.config,
        "epoch": epoch,
        "cur_step": trainer.cur_step,
        "best_valid_score": float(trainer.best_valid_score),
        # RecBole rounds metrics to numpy scalars, which weights_only does not read.
        "best_valid_result": None
        if best_valid_result is None
        else {metric: float(value) for metric, value in best_valid_result.items()},
        "train_loss_dict": trainer.train_loss_dict,
        "state_dict": trainer.model.state_dict(),
        "other_parameter": trainer.model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
        # fit keeps its train loader on the trainer; a RecBole trainer with a fit loop of its own
        # (NCLTrainer) has none, and resumes with weights and optimizer only.
        "random_state": random_state(trainer.train_data) if hasattr(trainer, "train_data") else None,
    }
    with open_replacing(saved_model_file, "wb") as file:
        torch.save(state, file)
    if verbose:
        trainer.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


def random_state(train_data):
    """Every random stream training draws from, as tensors and plain lists that
    ``weights_only=True`` reads back: Python's ``random`` (RecBole's sequence augmentations),
    numpy's global generator (negative sampling), torch's CPU and CUDA generators (dropout, the
    SSL views) and the train loader's own shuffle generator."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [keys.tolist(), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all(),
        "shuffle": train_data.generator.get_state(),
    }


def set_random_state(state, train_data):
    """Put every stream of :func:`random_state` back where ``state`` found it (generator states
    are CPU tensors, wherever the checkpoint was loaded to)."""
    random.setstate(state["python"])
    np.random.set_state(("MT19937", *state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in state["cuda"]])
    train_data.generator.set_state(state["shuffle"].cpu())


def resume_checkpoint(trainer, resume_file):
    """RecBole's ``Trainer.resume_checkpoint``, read with ``weights_only=True`` and restoring all
    that an uninterrupted run holds after the checkpoint's epoch: weights, optimizer, early
    stopping, best validation result, loss history and, once ``fit`` starts, the random state.

    The run continues to write its best checkpoint to ``resume_file``. A checkpoint of another
    model, dataset or seed (the seed fixes the split) is refused.
    """
    resume_file = str(resume_file)
    checkpoint = torch.load(resume_file, map_location=trainer.device, weights_only=True)
    for option in ("model", "dataset", "seed"):
        if checkpoint["config"][option] != trainer.config[option]:
            raise ValueError(
                f"checkpoint '{resume_file}' was trained with {option} {checkpoint['config'][option]!r}, "
                f"this run has {option} {trainer.config[option]!r}; resume with the checkpoint's {option}"
            )
    trainer.saved_model_file = resume_file
    trainer.start_epoch = checkpoint["epoch"] + 1
    trainer.cur_step = checkpoint["cur_step"]
    trainer.best_valid_score = checkpoint["best_valid_score"]
    trainer.best_valid_result = checkpoint["best_valid_result"]
    trainer.train_loss_dict = checkpoint["train_loss_dict"]
    trainer.model.load_state_dict(checkpoint["state_dict"])
    trainer.model.load_other_parameter(checkpoint.get("other_parameter"))
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.resumed_random_state = checkpoint["random_state"]
    trainer.logger.info(set_color("Resuming", "blue") + f" from {resume_file} at epoch {trainer.start_epoch}")


_recbole_fit = Trainer.fit
_recbole_valid_epoch = Trainer._valid_epoch


def fit(trainer, train_data, *args, **kwargs):
    """RecBole's ``Trainer.fit``, first restoring the random state of the checkpoint that
    :func:`resume_checkpoint` loaded, so the run draws the same shuffles, negatives and dropout
    masks as an uninterrupted one. It keeps ``train_data`` on the trainer: checkpoints save its
    shuffle generator."""
    trainer.train_data = train_data
    resumed = getattr(trainer, "resumed_random_state", None)
    if resumed is not None:
        set_random_state(resumed, train_data)
        trainer.resumed_random_state = None  # a second fit continues, it does not rewind
    return _recbole_fit(trainer, train_data, *args, **kwargs)


def valid_epoch(trainer, valid_data, show_progress=False):
    """RecBole's ``Trainer._valid_epoch``, keeping the result on the trainer for the checkpoint
    that ``fit`` writes when the result improved."""
    valid_score, trainer.valid_result = _recbole_valid_epoch(trainer, valid_data, show_progress)
    return valid_score, trainer.valid_result


def enable_safe_checkpoints():
    """Install the plugin's checkpoint writer, reader and resuming ``fit`` on RecBole's Trainer,
    so RecBole's built-in models run through the plugin get them too."""
    Trainer._save_checkpoint = save_checkpoint
    Trainer.resume_checkpoint = resume_checkpoint
    Trainer.fit = fit
    Trainer._valid_epoch = valid_epoch


def distributed_data_parallel(module, device_ids=None, **kwargs):
    """RecBole's trainers wrap the model as ``DistributedDataParallel(model, device_ids=[local_rank])``,
    which torch refuses for a model on the CPU (a ``gloo`` run): a CPU model gets none."""
    if next(module.parameters()).device.type == "cpu":
        device_ids = None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)
