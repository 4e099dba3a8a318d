"""RecBole's ``Collector``, fixed for the metrics that read plain (non-tensor) entries.

RecBole 1.2.1's ``Collector.get_data_struct`` calls ``.cpu()`` on every collected entry, so the
int and Counter entries (``data.num_items``, ``data.count_items``) that its own
AveragePopularity, GiniIndex, ItemCoverage and TailPercentage need raise AttributeError at the
first evaluation. The plugin's trainers collect with :class:`PlainEntriesCollector`
(``recbole_endo.trainer``); RecBole's class is left as it is.
"""

import copy

import torch
from recbole.evaluator.collector import Collector


class PlainEntriesCollector(Collector):
    """RecBole's Collector, with ``get_data_struct`` leaving non-tensor entries alone."""

    def get_data_struct(self):
        data = self.data_struct._data_dict
        plain = {key: data.pop(key) for key in list(data) if not isinstance(data[key], torch.Tensor)}
        returned = super().get_data_struct()
        data.update(plain)
        for key, value in plain.items():
            returned.set(key, copy.deepcopy(value))
        return returned
