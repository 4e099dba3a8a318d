"""What the plugin changes in RecBole for the runs it starts, and only while they run.

Importing ``recbole_endo`` only registers its models, trainers and metric with RecBole. The runs
the plugin starts (:func:`recbole_endo.quick_start.run_recbole_endo`, ``objective_function``,
``load_data_and_model``) run inside :func:`plugin_run`, which for their duration

- binds a race-free ``ensure_dir`` in every RecBole module that binds it by name: the processes
  of a DDP run create ``./log/<model>/`` and the checkpoint folder at the same moment, and
  RecBole's check-then-create fails the slower one with FileExistsError;
- lets RecBole's trainers wrap a CPU model for DDP (``gloo``), which torch refuses with the
  ``device_ids`` RecBole passes;
- turns autograd's anomaly detection off: importing RecBole's sequential models (which its
  ``quick_start`` does) runs ``torch.autograd.set_detect_anomaly(True)`` in ``sine.py``, a
  debugging mode left on for the whole process that records a traceback per forward operation and
  checks every gradient for NaN. It computes the same numbers, at a cost: on ml-100k (2 cores) an
  epoch of BPR took 0.21 s with it and 0.17 s without, TwoTowerSplit 1.01 s and 0.57 s,
  EndoDecouple 3.09 s and 1.60 s. The trainers still stop on a non-finite loss;
- hides the known deprecation warnings raised inside RecBole's own modules (pandas' chained
  assignment and ``Series.agg(len)`` in its dataset code, torch's ``GradScaler`` in its trainer
  and ``sparse.FloatTensor`` in its graph models),
  which repeat on every run and say nothing about the user's data or code. Any other warning,
  from RecBole or elsewhere, is shown;
- owns the console and file handlers that RecBole's ``init_logger`` adds to the root logger, and
  closes and removes them when the run ends; a record logged with ``extra=FILE_ONLY`` (RecBole's
  configuration, dataset and model dumps, the loss components) goes to the log file only
  (:func:`keep_file_only_records_off`). ``init_logger`` adds them with
  ``logging.basicConfig``, which does nothing while the root logger has handlers, so a second run
  in one process (a ``--compare`` worker, a tuning study) wrote its lines into the first run's
  log file and left its own empty.

Everything is put back when the run ends, also when it fails.
"""

import logging
import os
import warnings
from contextlib import ExitStack, contextmanager

import recbole.data.dataset.dataset
import recbole.data.utils
import recbole.trainer.trainer
import recbole.utils
import recbole.utils.logger
import recbole.utils.utils
import torch
from torch.nn.parallel import DistributedDataParallel

# Every RecBole module that binds ensure_dir by name.
ENSURE_DIR_MODULES = (
    recbole.utils, recbole.utils.utils, recbole.utils.logger, recbole.trainer.trainer,
    recbole.data.utils, recbole.data.dataset.dataset,
)
# (message start, category) of the warnings RecBole 1.2.1 raises in its own modules on every run.
RECBOLE_WARNINGS = (
    ("A value is trying to be set on a copy of a DataFrame or Series through chained assignment", FutureWarning),
    ("using <built-in function len> in Series.agg cannot aggregate", FutureWarning),
    (r"`torch.cuda.amp.GradScaler\(args...\)` is deprecated", FutureWarning),
    # RecBole's graph models (LightGCN, NGCF, ...) build their adjacency matrix the old way.
    (r"torch.sparse.SparseTensor\(indices, values, (shape, )?\*, device=\) is deprecated", UserWarning),
)


# ``extra=`` of a log record meant for the run's log file, not the screen.
FILE_ONLY = {"console": False}


def keep_file_only_records_off(handlers):
    """Let none of ``handlers`` that writes to a stream other than a file show a
    :data:`FILE_ONLY` record."""
    for handler in handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(lambda record: getattr(record, "console", True))


def ensure_dir(dir_path):
    """RecBole's ``ensure_dir`` without its check-then-create race."""
    os.makedirs(dir_path, exist_ok=True)


def distributed_data_parallel(module, device_ids=None, **kwargs):
    """RecBole's trainers wrap the model as ``DistributedDataParallel(model, device_ids=[local_rank])``,
    which torch refuses for a model on the CPU (a ``gloo`` run): a CPU model gets none."""
    if next(module.parameters()).device.type == "cpu":
        device_ids = None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


@contextmanager
def _patched(owner, name, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def _own_log_handlers():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [handler for handler in root.handlers if handler not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


@contextmanager
def plugin_run():
    """The scope of one run the plugin starts (see the module docstring); it nests."""
    with ExitStack() as stack:
        for module in ENSURE_DIR_MODULES:
            stack.enter_context(_patched(module, "ensure_dir", ensure_dir))
        stack.enter_context(_patched(recbole.trainer.trainer, "DistributedDataParallel", distributed_data_parallel))
        stack.enter_context(_own_log_handlers())
        stack.enter_context(torch.autograd.set_detect_anomaly(False))
        stack.enter_context(warnings.catch_warnings())
        for message, category in RECBOLE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=r"recbole\.")
        yield
