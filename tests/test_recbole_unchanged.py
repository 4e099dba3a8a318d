"""Importing recbole_endo registers its models and changes nothing else in RecBole; what the
plugin's runs need is scoped to them (recbole_endo.compat.run_scope)."""

import os
import subprocess
import sys
import warnings

import recbole.trainer.trainer
import recbole.utils.logger
from recbole.config import Config as RecBoleConfig
from recbole.evaluator.collector import Collector
from recbole.trainer import Trainer

from conftest import DATA_DIR, TINY_YAML
from recbole_endo.compat.run_scope import plugin_run
from recbole_endo.quick_start import run_recbole_endo



def tiny_arguments(**options):
    """The tiny dataset's arguments of a RecBole Config or run, as Python source."""
    config_dict = {"data_path": DATA_DIR, "epochs": 1, **options}
    return f"dataset='tiny', config_file_list=[{TINY_YAML!r}], config_dict={config_dict!r}"


def python(code, cwd, **env):
    """Run ``code`` in a fresh interpreter; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_recbole_checkpoint_written_after_the_import_loads_where_the_plugin_never_was(tmp_path):
    # RecBole 1.2.1 reloads its own best checkpoint with torch.load's default, which torch >= 2.6
    # made weights_only=True; torch's documented switch restores the old default for this run.
    python(
        "import recbole_endo\n"
        "from recbole.quick_start import run_recbole\n"
        f"run_recbole(model='BPR', {tiny_arguments(checkpoint_dir=str(tmp_path / 'saved'))})\n",
        tmp_path,
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
    )
    (checkpoint,) = (tmp_path / "saved").iterdir()
    loaded = python(
        "import sys, torch\n"
        f"checkpoint = torch.load({str(checkpoint)!r}, weights_only=False)\n"
        "print(type(checkpoint['config']).__module__, sorted(m for m in sys.modules if m.startswith('recbole_endo')))\n",
        tmp_path,
    )
    assert loaded.split() == ["recbole.config.configurator", "[]"]


def test_a_recbole_config_pickles_to_the_same_bytes_with_and_without_the_import(tmp_path):
    code = (
        "import hashlib, pickle\n"
        "from recbole.config import Config\n"
        f"config = Config(model='BPR', {tiny_arguments()})\n"
        "print(hashlib.sha256(pickle.dumps(config)).hexdigest())\n"
    )
    without = python(code, tmp_path)
    with_plugin = python("import recbole_endo\n" + code, tmp_path)
    assert with_plugin == without and len(without.strip()) == 64


def test_recbole_classes_keep_their_own_methods_after_the_import():
    import recbole_endo  # noqa: F401

    for method in ("_save_checkpoint", "resume_checkpoint", "fit", "_valid_epoch", "evaluate"):
        assert getattr(Trainer, method).__module__ == "recbole.trainer.trainer", method
    assert Collector.get_data_struct.__module__ == "recbole.evaluator.collector"
    assert RecBoleConfig._init_device.__module__ == "recbole.config.configurator"
    assert "__reduce__" not in vars(RecBoleConfig)
    assert recbole.trainer.trainer.DistributedDataParallel.__module__ == "torch.nn.parallel.distributed"


def test_ensure_dir_is_race_free_inside_a_plugin_run_and_recbole_own_outside(tmp_path):
    """DDP processes create ./log/<model>/ and the checkpoint folder at once; RecBole's own
    ensure_dir checks, then creates, and the slower process failed with FileExistsError."""
    recbole_ensure_dir = recbole.trainer.trainer.ensure_dir
    with plugin_run():
        for module in (recbole.trainer.trainer, recbole.utils.logger):
            assert module.ensure_dir.__module__ == "recbole_endo.compat.run_scope"
        folder = tmp_path / "saved"
        folder.mkdir()  # another process created it between RecBole's check and its makedirs
        recbole.trainer.trainer.ensure_dir(str(folder))
        assert folder.is_dir()
    assert recbole.trainer.trainer.ensure_dir is recbole_ensure_dir
    assert recbole.utils.logger.ensure_dir.__module__ == "recbole.utils.utils"


def test_a_plugin_run_hides_recbole_known_warnings_only_and_restores_the_filters(tiny, monkeypatch):
    import recbole_endo.quick_start

    extra_evaluation = recbole_endo.quick_start.extra_evaluation

    def warning_extra_evaluation(*args):
        warnings.warn("a warning of the user's own code", FutureWarning)
        return extra_evaluation(*args)

    monkeypatch.setattr(recbole_endo.quick_start, "extra_evaluation", warning_extra_evaluation)
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_recbole_endo(model="BPR", **tiny)
    messages = [str(warning.message) for warning in caught]
    assert "a warning of the user's own code" in messages
    assert not [m for m in messages if "chained assignment" in m or "GradScaler" in m or "Series.agg" in m], messages
    assert warnings.filters == filters


def test_each_plugin_run_in_one_process_writes_its_own_log_file(tmp_path):
    """RecBole's init_logger adds its handlers with logging.basicConfig, a no-op once the root logger
    has handlers: the second run's lines went into the first run's file, and its own stayed empty."""
    python(
        "import logging\n"
        "from recbole_endo.quick_start import run_recbole_endo\n"
        "for model in ('BPR', 'Pop'):\n"
        f"    run_recbole_endo(model=model, {tiny_arguments(state='INFO', checkpoint_dir=str(tmp_path / 'saved'))})\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n",
        tmp_path,
    )
    for model in ("BPR", "Pop"):
        (log_file,) = (tmp_path / "log" / model).iterdir()
        lines = log_file.read_text().splitlines()
        assert sum("test result" in line for line in lines) == 1, (model, len(lines))
        # RecBole names a checkpoint <model>-<time>.pth; one epoch saves once.
        saved = [os.path.basename(line.split("Saving current: ")[1]) for line in lines if "Saving current: " in line]
        assert [name.split("-")[0] for name in saved] == [model], (model, saved)
