"""The checkpoint format of the plugin's runs: what RecBole's ``Trainer._save_checkpoint`` stores,
as data that torch's safe loader (``weights_only=True``) reads back, written atomically.

RecBole 1.2.1 pickles its ``Config`` object and the raw ``other_parameter()`` values into every
checkpoint, with pickle protocol 4, and reloads them with ``torch.load``'s default, which torch
2.6 made the safe loader: its own runs fail when they reload the best checkpoint to test it, and
resuming and ``load_data_and_model`` fail the same way. It writes the file in place, so a crash
while writing leaves a truncated checkpoint.

- The config pickles as plain data (:class:`recbole_endo.config.Config`).
- ``other_parameter()``, the state RecBole's models keep outside their parameters, is stored as
  tensors and plain values (:func:`plain_other_parameter`) and rebuilt on load
  (:func:`restore_other_parameter`): numpy arrays (EASE), scipy sparse matrices (EASE, ItemKNN,
  SLIMElastic, AsymKNN), tensors (LightGCN, Pop), ``nn.Module`` attributes (SASRecF, GRU4RecF,
  FDSA, DIN, DIEN; their weights), numbers, and lists, tuples and dicts of these. No class is
  allow-listed for unpickling: a sparse matrix is rebuilt from its coordinates, a module's
  weights are loaded into the module the model already built.
- The random state of every stream training draws from, so that a resumed run continues
  exactly (:func:`random_state`).
"""

import random

import numpy as np
import scipy.sparse
import torch
import torch.nn as nn
from recbole.utils import set_color

from recbole_endo.config import plain_config
from recbole_endo.files import open_replacing

# Marks a dict of this module's encoding; a model's own dicts are stored under this tag too.
KIND = "recbole_endo.kind"


def _plain(value, name):
    """``value`` (a piece of ``other_parameter()['name']``) as tensors and plain data."""
    if isinstance(value, np.generic) and value.dtype != object:  # before float: np.float64 is one
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return {KIND: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value))}
    if scipy.sparse.issparse(value):
        coo = value.tocoo()
        return {
            KIND: "sparse", "format": value.format, "shape": list(value.shape),
            "row": torch.from_numpy(coo.row), "col": torch.from_numpy(coo.col), "data": torch.from_numpy(coo.data),
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item, name) for item in value)
    if isinstance(value, dict):
        return {KIND: "dict", "items": [(_plain(key, name), _plain(item, name)) for key, item in value.items()]}
    raise TypeError(
        f"{name} holds a {type(value).__module__}.{type(value).__name__}, which a checkpoint "
        "cannot store as plain data (tensors, numpy arrays, scipy sparse matrices, numbers, "
        "strings, lists, tuples, dicts, or an nn.Module attribute of the model)"
    )


def _restored(value):
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(item) for item in value)
    if not isinstance(value, dict):
        return value
    kind = value.get(KIND)
    if kind == "ndarray":
        return value["data"].cpu().numpy()
    if kind == "sparse":
        row, col, data = (value[key].cpu().numpy() for key in ("row", "col", "data"))
        return scipy.sparse.coo_matrix((data, (row, col)), shape=tuple(value["shape"])).asformat(value["format"])
    if kind == "dict":
        return {_restored(key): _restored(item) for key, item in value["items"]}
    raise ValueError(f"checkpoint other_parameter entry of unknown kind {kind!r}")


def plain_other_parameter(model):
    """``model.other_parameter()`` as tensors and plain data; an ``nn.Module`` value as its
    state dict (restored into the model's own module)."""
    stored = {}
    for key, value in model.other_parameter().items():
        if isinstance(value, nn.Module):
            stored[key] = {KIND: "module", "state_dict": value.state_dict()}
        else:
            stored[key] = _plain(value, f"{type(model).__name__}.other_parameter()['{key}']")
    return stored


def restore_other_parameter(model, stored):
    """Load :func:`plain_other_parameter`'s ``stored`` into ``model``, as RecBole's
    ``load_other_parameter`` loads the raw values."""
    if not stored:
        return
    values = {}
    for key, value in stored.items():
        if isinstance(value, dict) and value.get(KIND) == "module":
            getattr(model, key).load_state_dict(value["state_dict"])
        else:
            values[key] = _restored(value)
    model.load_other_parameter(values)


def read_checkpoint(path, device="cpu"):
    """A checkpoint read with torch's safe loader: tensors, plain data and the plugin's config."""
    return torch.load(str(path), map_location=device, weights_only=True)


def load_weights(model, checkpoint):
    """The model's parameters and ``other_parameter()`` state from a read checkpoint."""
    model.load_state_dict(checkpoint["state_dict"])
    restore_other_parameter(model, checkpoint.get("other_parameter"))


def write_checkpoint(trainer, epoch, verbose=True, **kwargs):
    """RecBole's checkpoint of ``trainer`` at ``epoch``, plus what a resumed run needs to continue
    exactly (best validation result and epoch, loss history, random state), to a temporary file
    renamed over the target, so a crash never leaves a truncated checkpoint."""
    saved_model_file = kwargs.pop("saved_model_file", trainer.saved_model_file)
    # fit writes an improved epoch's checkpoint before it records that epoch's result as the best:
    # the best result is the one valid_epoch has just kept.
    best_valid_result = getattr(trainer, "valid_result", trainer.best_valid_result)
    state = {
        "config": plain_config(trainer.config),
        "epoch": epoch,
        "best_epoch": trainer.best_epoch,
        "cur_step": trainer.cur_step,
        "best_valid_score": float(trainer.best_valid_score),
        # RecBole rounds metrics to numpy scalars, which weights_only does not read.
        "best_valid_result": None
        if best_valid_result is None
        else {metric: float(value) for metric, value in best_valid_result.items()},
        "train_loss_dict": trainer.train_loss_dict,
        "state_dict": trainer.model.state_dict(),
        "other_parameter": plain_other_parameter(trainer.model),
        "optimizer": trainer.optimizer.state_dict(),
        # fit keeps its train loader on the trainer; a RecBole trainer with a fit loop of its own
        # (NCLTrainer) has none, and resumes with weights and optimizer only.
        "random_state": random_state(trainer.train_data) if hasattr(trainer, "train_data") else None,
    }
    # torch's default pickle protocol: RecBole's protocol 4 has a FRAME opcode the safe loader rejects.
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
