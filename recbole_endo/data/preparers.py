"""Datasets a run writes before RecBole loads them, found by the dataset's name: the run path
(:func:`recbole_endo.quick_start.build`) calls :func:`prepare_dataset` and names no dataset itself.

- ``endo-synth``: generated from the ``synth_*`` options on first use, and again when they
  change (:func:`recbole_endo.data.synth.prepare_dataset`).

Every other dataset is read as RecBole reads it; a converter (Coat, Yahoo! R3, cold-start splits)
is a command run once before (docs/protocols.md).
"""

from recbole_endo.data import synth

DATASET_PREPARERS = {synth.SYNTH_DATASET: synth.prepare_dataset}


def prepare_dataset(config):
    """Write ``config``'s dataset with its preparer in :data:`DATASET_PREPARERS`, which decides
    whether it is missing or stale; a dataset without one is left alone."""
    preparer = DATASET_PREPARERS.get(config["dataset"])
    if preparer is not None:
        preparer(config)
