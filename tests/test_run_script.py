import os
import subprocess
import sys

from conftest import DATA_DIR, TINY_YAML

SCRIPT = os.path.join(os.path.dirname(DATA_DIR), "..", "run_recbole_endo.py")


def run_script(*args, cwd):
    return subprocess.run(
        [sys.executable, SCRIPT, *args, f"--data_path={DATA_DIR}", "--epochs=1"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


def test_model_comes_from_the_properties_file(tmp_path):
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("model: TwoTowerConcat\n")
    run = run_script(f"--config_files={TINY_YAML} {model_yaml}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "model: TwoTowerConcat" in run.stdout and "'ndcg@10'" in run.stdout


def test_model_option_overrides_the_properties_file(tmp_path):
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("model: TwoTowerConcat\n")
    run = run_script("--model=BPR", f"--config_files={TINY_YAML} {model_yaml}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "model: BPR" in run.stdout


def test_unknown_model_fails_listing_the_models(tmp_path):
    run = run_script("--model=NoSuchModel", f"--config_files={TINY_YAML}", cwd=tmp_path)
    assert run.returncode != 0
    assert "NoSuchModel" in run.stderr and "TwoTowerSplit" in run.stderr
