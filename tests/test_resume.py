import os
import subprocess
import sys

import pytest
import torch

from conftest import DATA_DIR, TINY_YAML
from recbole_endo import Config
from recbole_endo.quick_start import build, run_recbole_endo

SCRIPT = os.path.join(os.path.dirname(DATA_DIR), "..", "run_recbole_endo.py")
# Options under which every random stream matters: TwoTowerSplit's tiny default has no dropout.
# EndoSASRec's encoder must match the tiny tower's size (8), and its sequences the tiny data's.
OPTIONS = {
    "TwoTowerSplit": {"dropout_prob": 0.2},
    "EndoSASRec": {"hidden_size": 8, "inner_size": 16, "MAX_ITEM_LIST_LENGTH": 10},
}


def options(tiny, run, **extra):
    """``tiny`` for one run, with a checkpoint folder of its own: RecBole names checkpoints by
    the second, so runs started within one second would share a file."""
    checkpoint_dir = os.path.join(tiny["config_dict"]["checkpoint_dir"], run)
    return {**tiny, "config_dict": {**tiny["config_dict"], "checkpoint_dir": checkpoint_dir, **extra}}


def built(tiny, model, run, **extra):
    _, _, trainer, splits = build(Config(model=model, **options(tiny, run, **OPTIONS.get(model, {}), **extra)))
    return trainer, splits


def fitted(tiny, model, run, epochs, resume_file=None):
    """A trainer fitted for ``epochs`` in all, from ``resume_file`` if given, and its test data."""
    trainer, (train_data, valid_data, test_data) = built(tiny, model, run, epochs=epochs)
    if resume_file:
        trainer.resume_checkpoint(resume_file)
    trainer.fit(train_data, valid_data)
    return trainer, test_data


@pytest.mark.parametrize("model", ["TwoTowerSplit", "EndoDecouple", "BPR", "EndoSASRec"])
def test_run_interrupted_after_two_epochs_and_resumed_ends_as_the_uninterrupted_run(tiny, model):
    straight, test_data = fitted(tiny, model, "straight", epochs=4)
    interrupted, _ = fitted(tiny, model, "interrupted", epochs=2)
    resumed, _ = fitted(tiny, model, "interrupted", epochs=4, resume_file=interrupted.saved_model_file)
    assert resumed.start_epoch > 0
    final_weights = straight.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, final_weights[name]), name
    assert resumed.train_loss_dict == straight.train_loss_dict
    assert resumed.best_valid_score == straight.best_valid_score
    assert resumed.best_valid_result == straight.best_valid_result
    assert resumed.evaluate(test_data) == straight.evaluate(test_data)  # each from its best checkpoint


def test_run_recbole_endo_resumes_into_the_interrupted_checkpoint_with_the_same_results(tiny):
    straight = run_recbole_endo(model="EndoDecouple", **options(tiny, "straight", epochs=4))
    interrupted = run_recbole_endo(model="EndoDecouple", **options(tiny, "interrupted", epochs=2))
    resumed = run_recbole_endo(
        model="EndoDecouple", **options(tiny, "interrupted", epochs=4), resume_file=interrupted["checkpoint"]
    )
    assert resumed["checkpoint"] == interrupted["checkpoint"]
    for key in ("test_result", "best_valid_result", "best_valid_score", "epochs", "best_epoch"):
        assert resumed[key] == straight[key], key


@pytest.mark.parametrize(
    "option, value, message",
    [("seed", 7, "trained with seed 2020, this run has seed 7"), ("learner", "sgd", "this run has learner 'sgd'")],
)
def test_checkpoint_of_another_seed_or_learner_is_refused(tiny, option, value, message):
    interrupted, _ = fitted(tiny, "BPR", "interrupted", epochs=1)
    trainer, _ = built(tiny, "BPR", "resumed", epochs=2, **{option: value})
    with pytest.raises(ValueError, match=message):
        trainer.resume_checkpoint(interrupted.saved_model_file)


def test_resume_trains_with_its_configs_learning_rate_and_weight_decay_and_the_checkpoints_moments(tiny):
    interrupted, _ = fitted(tiny, "BPR", "interrupted", epochs=1)
    trainer, _ = built(tiny, "BPR", "interrupted", epochs=2, learning_rate=0.5, weight_decay=0.1)
    trainer.resume_checkpoint(interrupted.saved_model_file)
    saved = torch.load(interrupted.saved_model_file, weights_only=True)["optimizer"]
    assert [(group["lr"], group["weight_decay"]) for group in saved["param_groups"]] != [(0.5, 0.1)]
    assert [(group["lr"], group["weight_decay"]) for group in trainer.optimizer.param_groups] == [(0.5, 0.1)]
    resumed = trainer.optimizer.state_dict()["state"]
    assert resumed.keys() == saved["state"].keys()
    for index, state in saved["state"].items():
        for key, value in state.items():  # Adam's step count and moment estimates
            assert torch.equal(resumed[index][key], value), key


def test_trainer_with_a_fit_loop_of_its_own_still_writes_checkpoints(tiny):
    # RecBole's NCLTrainer runs its own loop, not Trainer.fit, which keeps the train loader.
    trainer, _ = built(tiny, "BPR", "own-loop", epochs=1)
    trainer._save_checkpoint(0)
    assert torch.load(trainer.saved_model_file, weights_only=True)["random_state"] is None


def test_script_resumes_and_refuses_resume_with_ddp(tiny, tmp_path):
    interrupted, _ = fitted(tiny, "BPR", "interrupted", epochs=1)
    folder = tmp_path / "script"
    folder.mkdir()

    def script(*args):
        command = [sys.executable, SCRIPT, "--model=BPR", f"--config_files={TINY_YAML}", f"--data_path={DATA_DIR}"]
        return subprocess.run(command + list(args), cwd=folder, capture_output=True, text=True, timeout=300)

    run = script(f"--resume={interrupted.saved_model_file}", "--epochs=2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("BPR: 2 epochs,")
    assert os.listdir(folder / "saved") == []  # it went on writing the interrupted checkpoint
    run = script(f"--resume={interrupted.saved_model_file}", "--nproc=2")
    assert run.returncode != 0 and "--resume continues one single-process run" in run.stderr


def test_resume_with_no_epoch_left_is_refused_before_anything_changes(tiny):
    interrupted, _ = fitted(tiny, "BPR", "interrupted", epochs=1)  # its checkpoint holds epoch 0
    with open(interrupted.saved_model_file, "rb") as file:
        before = file.read()
    trainer, _ = built(tiny, "BPR", "interrupted", epochs=1)
    with pytest.raises(ValueError, match=r"holds epochs 0 to 0, and config option 'epochs' is 1"):
        trainer.resume_checkpoint(interrupted.saved_model_file)
    with open(interrupted.saved_model_file, "rb") as file:
        assert file.read() == before
    assert trainer.start_epoch == 0


def test_best_epoch_is_the_validated_epoch_of_the_checkpoint_when_eval_step_skips_epochs(tiny):
    # Validation after epochs 1 and 3 of 0..4; epoch 4 is trained but never validated.
    result = run_recbole_endo(model="BPR", **options(tiny, "eval-step", epochs=5, eval_step=2, stopping_step=10))
    assert result["epochs"] == 5
    assert result["best_epoch"] in (1, 3)
    assert result["best_epoch"] == torch.load(result["checkpoint"], weights_only=True)["epoch"]
