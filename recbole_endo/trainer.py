"""Trainers of the plugin's runs: :class:`PluginTrainerMixin` gives any RecBole trainer the
plugin's checkpoints (safe, atomic, resumable, holding any model's ``other_parameter()`` state),
and a model class chooses its trainer by its attributes (:func:`registered_trainer`): one that
``reports_loss_components`` trains with :class:`FeatureTowerTrainer`, one with a ``trainer_type``
with RecBole's trainer for that type.
"""

import functools
import math

import recbole.utils.utils
import torch
from recbole.trainer import PretrainTrainer, Trainer
from recbole.utils import set_color

from recbole_endo.compat.checkpoint import load_weights, read_checkpoint, set_random_state, write_checkpoint
from recbole_endo.compat.collector import PlainEntriesCollector
from recbole_endo.compat.run_scope import FILE_ONLY
from recbole_endo.data.interactions import evaluation_split
from recbole_endo.evaluation.protocols import (
    StructKeepingEvaluator,
    candidate_lists,
    cold_start_evaluation,
    full_ranking,
    list_evaluation,
    validation_protocol,
)
from recbole_endo.registry import get_model

_recbole_get_trainer = recbole.utils.utils.get_trainer


class PluginTrainerMixin:
    """What the plugin's runs add to a RecBole ``Trainer`` (class or subclass), in its own classes
    rather than in RecBole's (see :func:`plugin_trainer`):

    - checkpoints that torch's safe loader reads, written atomically, with the model's
      ``other_parameter()`` state as plain data (``recbole_endo.compat.checkpoint``), read back so by
      ``evaluate(load_best_model=True)`` and ``resume_checkpoint``;
    - resuming restores everything an uninterrupted run holds after the checkpoint's epoch, the
      random state included, so the resumed run ends as the uninterrupted one;
    - ``best_epoch``: the epoch of the best validation, whatever ``eval_step``;
    - RecBole's collector, fixed for its non-accuracy metrics (:class:`PlainEntriesCollector`);
    - RecBole's evaluator, keeping what it last evaluated, so a run can report each test user's
      metric values (:class:`StructKeepingEvaluator`);
    - a ``valid_metric`` of the list protocol (``exposed:ndcg@5``) or of a cold-start stratum
      (``cold:ndcg@10``) scores validation by that protocol on the validation split, the
      training split as history: on Coat, each user's held-out ratings ranked and graded as the
      test's random ones are; on a cold-item split, the new items among the validation targets
      ranked as the test's are.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = PlainEntriesCollector(config)
        self.evaluator = StructKeepingEvaluator(config)
        self.current_epoch = None
        self.best_epoch = None
        self.validation_lists = None

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self.current_epoch = epoch_idx
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _valid_epoch(self, valid_data, show_progress=False):
        """RecBole's, keeping the result on the trainer for the checkpoint that ``fit`` writes
        when it improved, and the epoch it improved at."""
        protocol = validation_protocol(self.config)
        if protocol is None:
            valid_score, self.valid_result = super()._valid_epoch(valid_data, show_progress)
        else:
            splits = [evaluation_split(self.train_data), valid_data._dataset]
            self.model.eval()
            with torch.no_grad():
                if protocol == "list":
                    if self.validation_lists is None:  # they depend on the splits and the seed only
                        self.validation_lists = candidate_lists(self.config, splits)
                    self.valid_result = list_evaluation(self.config, self.model, splits, lists=self.validation_lists)
                else:
                    self.valid_result = cold_start_evaluation(self.config, splits[0], full_ranking(self.model, splits))
            valid_score = self.valid_result[self.valid_metric]
        # RecBole's early_stopping takes a score at least as good as the best as the new best.
        if self.valid_metric_bigger:
            improved = valid_score >= self.best_valid_score
        else:
            improved = valid_score <= self.best_valid_score
        if improved:
            self.best_epoch = self.current_epoch
        return valid_score, self.valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint, as ``recbole_endo.compat.checkpoint`` writes it; under DDP rank 0 writes."""
        distributed = not self.config["single_spec"]
        if not distributed or self.config["local_rank"] == 0:
            write_checkpoint(self, epoch, verbose, **kwargs)
        if distributed:
            # Every rank loads the best checkpoint to test: none may read it before rank 0 wrote it.
            torch.distributed.barrier()

    def resume_checkpoint(self, resume_file):
        """Continue from ``resume_file``: weights, optimizer, early stopping, best validation
        result and epoch, loss history and, once ``fit`` starts, the random state. The run goes
        on writing its best checkpoint to ``resume_file``, and trains with this run's
        ``learning_rate`` and ``weight_decay``. A checkpoint of another model, dataset, seed (the
        seed fixes the split) or learner (its state is another optimizer's), or one with no epoch
        left to train, is refused before anything is loaded."""
        resume_file = str(resume_file)
        checkpoint = read_checkpoint(resume_file, self.device)
        for option in ("model", "dataset", "seed", "learner"):
            if checkpoint["config"][option] != self.config[option]:
                raise ValueError(
                    f"checkpoint '{resume_file}' was trained with {option} {checkpoint['config'][option]!r}, "
                    f"this run has {option} {self.config[option]!r}; resume with the checkpoint's {option}"
                )
        start_epoch = checkpoint["epoch"] + 1
        if start_epoch >= self.epochs:
            raise ValueError(
                f"checkpoint '{resume_file}' holds epochs 0 to {checkpoint['epoch']}, and config option "
                f"'epochs' is {self.epochs}: no epoch is left to train. Resume with epochs above "
                f"{start_epoch}, or test the checkpoint with recbole_endo.quick_start.load_data_and_model"
            )
        self.saved_model_file = resume_file
        self.start_epoch = start_epoch
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint["best_valid_result"]
        # A checkpoint is written when validation improves: one without best_epoch is its own.
        self.best_epoch = checkpoint.get("best_epoch", checkpoint["epoch"])
        self.train_loss_dict = checkpoint["train_loss_dict"]
        load_weights(self.model, checkpoint)
        # load_state_dict restores the optimizer's state (Adam's moment estimates and step counts),
        # and with it each parameter group's settings as the checkpoint's run had them. The settings
        # this run's config built (learning_rate, weight_decay) are put back, so the run trains with
        # the options its config and log report: a run resumed at another learning rate continues
        # its moments at that rate. (Another learner's state does not fit: it is refused above.)
        groups = self.optimizer.param_groups
        settings = [{key: value for key, value in group.items() if key != "params"} for group in groups]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        self.resumed_random_state = checkpoint["random_state"]
        self.logger.info(set_color("Resuming", "blue") + f" from {resume_file} at epoch {self.start_epoch}")

    def fit(self, train_data, *args, **kwargs):
        """RecBole's ``fit``, first restoring the random state of the checkpoint that
        :meth:`resume_checkpoint` loaded, so the run draws the same shuffles, negatives and
        dropout masks as an uninterrupted one. It keeps ``train_data`` on the trainer:
        checkpoints save its shuffle generator."""
        self.train_data = train_data
        resumed = getattr(self, "resumed_random_state", None)
        if resumed is not None:
            set_random_state(resumed, train_data)
            self.resumed_random_state = None  # a second fit continues, it does not rewind
        return super().fit(train_data, *args, **kwargs)

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """RecBole's ``evaluate``, loading the best checkpoint with the safe loader."""
        if load_best_model and eval_data:
            checkpoint_file = model_file or self.saved_model_file
            load_weights(self.model, read_checkpoint(checkpoint_file, self.device))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


class PretrainCheckpointMixin(PluginTrainerMixin):
    """:class:`PluginTrainerMixin` for RecBole's ``PretrainTrainer`` family (S3Rec, RaCT), whose
    pre-training stage writes its own checkpoints, which the run then tests."""

    def save_pretrained_model(self, epoch, saved_model_file):
        write_checkpoint(self, epoch, verbose=False, saved_model_file=saved_model_file)
        self.saved_model_file = saved_model_file


@functools.cache
def plugin_trainer(trainer_class):
    """``trainer_class`` (a RecBole ``Trainer`` subclass) with :class:`PluginTrainerMixin`'s
    guarantees; a trainer with no ``Trainer`` loop (RecBole's tree-model trainers) as it is."""
    if issubclass(trainer_class, PluginTrainerMixin) or not issubclass(trainer_class, Trainer):
        return trainer_class
    mixin = PretrainCheckpointMixin if issubclass(trainer_class, PretrainTrainer) else PluginTrainerMixin
    return type(trainer_class.__name__, (mixin, trainer_class), {"__module__": __name__})


class FeatureTowerTrainer(PluginTrainerMixin, Trainer):
    """RecBole's Trainer that also logs, every epoch, the batch mean of each loss component the
    model reports in ``model.loss_components`` (the log file, not the screen, and TensorBoard, ``Loss/<name>``), and
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

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer; Adam and AdamW in torch's fused form, the same update in one
        kernel per step where RecBole's takes about ten operators per parameter tensor (the
        towers hold tens of them: a sixth of an EndoDecouple step on a CPU, docs/results)."""
        optimizer = super()._build_optimizer(**kwargs)
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
            return optimizer
        groups = [{key: value for key, value in group.items() if key not in ("foreach", "fused")}
                  for group in optimizer.param_groups]
        return type(optimizer)(groups, fused=True)

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
            + ": " + ", ".join(f"{name}={value:.4f}" for name, value in means.items()),
            extra=FILE_ONLY,
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


def registered_trainer(model_type, model_name):
    """The trainer RecBole uses for ``model_name`` once the plugin is registered, as its class
    asks: :class:`FeatureTowerTrainer` for a model that ``reports_loss_components`` (the feature
    towers' and the SASRecs' on them), RecBole's choice for the model's ``trainer_type`` when it
    declares one (SideProfile, sequential for its data, trains in one traditional pass), else
    RecBole's own choice for ``model_type``, unchanged (RecBole's models, ItemMeanRating, ...)."""
    model_class = get_model(model_name)
    if getattr(model_class, "reports_loss_components", False):
        return FeatureTowerTrainer
    return _recbole_get_trainer(getattr(model_class, "trainer_type", model_type), model_name)


def get_trainer(model_type, model_name):
    """The trainer class of the plugin's runs for ``model_name``: the plugin's, else RecBole's
    choice with the plugin's checkpoints (:func:`plugin_trainer`)."""
    return plugin_trainer(registered_trainer(model_type, model_name))
