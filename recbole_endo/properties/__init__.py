"""The plugin's YAML defaults, layered over RecBole's (``recbole_endo.config``), shipped in the
package as RecBole ships ``recbole/properties``.

Hand-written: ``overall.yaml``, ``sequential.yaml``, ``model/<Model>.yaml``, ``dataset/<dataset>.yaml``,
the tuner's search spaces ``search/<Model>.yaml`` and ``protocols/`` (files a run names itself).
Generated only: ``tuned/<dataset>/<Model>.yaml``, written by
``python -m recbole_endo.experiments.tune --promote`` and layered last unless ``tuned`` is false.
"""
