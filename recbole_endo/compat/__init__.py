"""What the plugin changes in RecBole 1.2.1, apart from the plugin's own logic; each module names
the upstream behaviour it changes and why.

- ``registration``: :func:`~recbole_endo.compat.registration.register`, the one place that tells
  RecBole about the plugin (its models, trainers, metrics and checkpoint config), run when
  ``recbole_endo`` is imported;
- ``config``: RecBole's ``Config`` with its failures fixed (distributed runs without CUDA, errors
  that name the file or option, sequential models trained with CE, ml-100k's ``data_path``);
- ``run_scope``: what changes in RecBole for the duration of a run the plugin starts;
- ``checkpoint``: checkpoints that torch's safe loader reads, written atomically;
- ``collector``: RecBole's collector, fixed for its non-accuracy metrics;
- ``feature_join``: batches without RecBole's feature join, for models that never read it.
"""
