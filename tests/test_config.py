import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import recbole.utils
import torch
from recbole.config import Config as RecBoleConfig
from recbole.model.general_recommender import BPR

from recbole_endo import Config, TwoTowerConcat, TwoTowerSplit, get_model
from recbole_endo.config import check_options, option_source_lines, option_sources, properties_folder
from recbole_endo.quick_start import run_recbole_endo


def test_get_model_finds_plugin_and_builtin_models():
    assert get_model("TwoTowerSplit") is TwoTowerSplit
    assert get_model("BPR") is BPR


def test_unknown_model_error_lists_available_models():
    with pytest.raises(ValueError) as error:
        get_model("NoSuchModel")
    message = str(error.value)
    assert "NoSuchModel" in message and "TwoTowerConcat" in message and "LightGCN" in message


def test_recbole_get_model_resolves_plugin_models_after_import():
    assert recbole.utils.get_model("TwoTowerConcat") is TwoTowerConcat
    assert recbole.utils.get_model("BPR") is BPR


def test_plugin_defaults_are_layered_under_user_files(tiny):
    config = Config(model="TwoTowerSplit", **tiny)
    assert config["valid_metric"] == "NDCG@10"  # plugin overall.yaml over RecBole's MRR@10
    assert config["dropout_prob"] == 0.0  # plugin model/TwoTowerSplit.yaml
    assert config["embedding_size"] == 8  # the user's file over the model defaults (64)
    assert config["topk"] == [10, 20]


def test_precedence_dict_over_file_and_command_line_over_dict(tiny, monkeypatch):
    tiny["config_dict"]["embedding_size"] = 16
    assert Config(model="TwoTowerSplit", **tiny)["embedding_size"] == 16
    monkeypatch.setattr(sys, "argv", ["run", "--embedding_size=32"])
    assert Config(model="TwoTowerSplit", **tiny)["embedding_size"] == 32


def test_model_is_selected_by_config_file(tiny, tmp_path):
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("model: TwoTowerConcat\n")
    tiny["config_file_list"].append(str(model_yaml))
    config = Config(**tiny)
    assert config["model"] == "TwoTowerConcat" and config.model_class is TwoTowerConcat


def test_builtin_model_gets_the_plugin_protocol(tiny):
    config = Config(model="BPR", **tiny)
    assert config["valid_metric"] == "NDCG@10" and config.model_class is BPR


def test_recbole_config_applies_plugin_defaults_to_plugin_models_only(tiny):
    plugin = RecBoleConfig(model="TwoTowerSplit", **tiny)
    assert plugin["valid_metric"] == "NDCG@10" and plugin["dropout_prob"] == 0.0
    builtin = RecBoleConfig(model="BPR", dataset="ml-100k")
    assert builtin["valid_metric"] == "MRR@10" and builtin["endo_fields"] is None


def test_config_round_trips_through_torch_safe_loader(tiny):
    config = Config(model="TwoTowerSplit", **tiny)
    buffer = io.BytesIO()
    torch.save({"config": config}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["config"]
    assert isinstance(restored, Config)
    assert restored.final_config_dict == config.final_config_dict
    assert restored.model_class is TwoTowerSplit


def test_config_with_unstorable_value_fails_naming_the_key(tiny):
    config = Config(model="TwoTowerSplit", **tiny)
    config["callback"] = object()
    with pytest.raises(TypeError, match="'callback'"):
        torch.save({"config": config}, io.BytesIO())


def test_no_epoch_to_train_names_the_option(tiny):
    with pytest.raises(ValueError, match="'epochs'"):
        run_recbole_endo(model="BPR", **{**tiny, "config_dict": {**tiny["config_dict"], "epochs": 0}})


class Terminal:
    def write(self, text):
        return len(text)

    def isatty(self):
        return True


def test_progress_bars_show_in_a_terminal_only_unless_set(tiny, monkeypatch):
    assert Config(model="BPR", **tiny)["show_progress"] is False  # pytest captures stderr: no terminal
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert Config(model="BPR", **tiny)["show_progress"] is True
    tiny["config_dict"]["show_progress"] = False
    assert Config(model="BPR", **tiny)["show_progress"] is False


def test_a_second_checkout_reads_its_own_properties(tmp_path):
    # A copy of the package, its properties inside, stands in for a git worktree: an editable
    # install points recbole_endo at the first checkout, whose defaults the copy must not read.
    checkout = Path(__file__).resolve().parents[1]
    shutil.copytree(checkout / "recbole_endo", tmp_path / "recbole_endo", ignore=shutil.ignore_patterns("__pycache__"))
    script = "import recbole_endo.config as c; print(c.properties_folder()); print(c.tuned_file('BPR', 'ml-100k'))"
    lines = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    properties = tmp_path / "recbole_endo" / "properties"
    assert lines == [str(properties), str(properties / "tuned" / "ml-100k" / "BPR.yaml")]
    assert (properties / "overall.yaml").is_file()


def test_each_option_is_named_with_the_one_layer_that_set_it(tiny, tmp_path):
    (tmp_path / "tuned").mkdir()
    tuned = tmp_path / "tuned" / "BPR.yaml"
    tuned.write_text("learning_rate: 0.0123\nembedding_size: 4\nweight_decay: 0.001\n")
    tiny["config_dict"].update(tuned=str(tmp_path / "tuned"), weight_decay=0.01)
    config = Config(model="BPR", **tiny)
    sources = dict(option_sources(config))
    overall = str(properties_folder() / "overall.yaml")
    assert list(sources) == [overall, str(tuned)]  # no model or dataset file of the plugin's for BPR on tiny
    # tiny.yaml sets embedding_size, config_dict weight_decay and tuned: each is named once, with its last setter
    assert sources[str(tuned)] == ["learning_rate"] and config["learning_rate"] == 0.0123
    assert "valid_metric" in sources[overall] and "tuned" not in sources[overall]
    lines = option_source_lines(config)
    assert lines[0].startswith(f"options from {overall}: eval_args, ")
    assert lines[1] == "options from tuned/BPR.yaml (tuned: false runs without it): learning_rate"  # under the working directory
    assert lines[2].startswith("options given to the run, over every file: config files: dataset, ")
    assert lines[2].endswith(", embedding_size, mlp_hidden_size, state; config_dict: data_path, checkpoint_dir, tuned, weight_decay")
    assert len(lines) == 3


def test_a_config_file_that_is_not_yaml_is_named_with_its_line(tiny, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: 1\nmlp_hidden_size: [16, 8\nembedding_size: 8\n")
    tiny["config_file_list"].append(str(broken))
    with pytest.raises(ValueError) as error:
        Config(model="BPR", **tiny)
    assert str(error.value).startswith(f"config file '{broken}' is not valid YAML at line 3, column 15: ")
    assert "<unicode string>" not in str(error.value)


def test_a_tuned_file_that_is_not_yaml_is_named_too(tiny, tmp_path):
    (tmp_path / "BPR.yaml").write_text("learning_rate: 0.01\n  weight_decay: 0.1\n")
    tiny["config_dict"]["tuned"] = str(tmp_path)
    with pytest.raises(ValueError, match=r"config file '.*BPR\.yaml' is not valid YAML at line 2, column 15"):
        Config(model="BPR", **tiny)


@pytest.mark.parametrize(
    "text, message",
    [(None, "does not exist"), ("- epochs\n", "holds a YAML list, not options")],
)
def test_a_missing_config_file_or_one_without_options_is_named(text, message, tiny, tmp_path):
    file = tmp_path / "options.yaml"
    if text is not None:
        file.write_text(text)
    tiny["config_file_list"].append(str(file))
    with pytest.raises(ValueError, match=f"config file '{file}' {message}"):
        Config(model="BPR", **tiny)


def test_an_empty_config_file_sets_no_option(tiny, tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    tiny["config_file_list"].append(str(tmp_path / "empty.yaml"))
    assert Config(model="BPR", **tiny)["embedding_size"] == 8


def test_no_model_given_is_a_value_error_naming_the_option(tiny):
    with pytest.raises(ValueError, match="no model given: name it with --model=NAME"):
        Config(**tiny)


@pytest.mark.parametrize(
    "option, value",
    [("learning_rate", "abc"), ("weight_decay", -0.1), ("eval_batch_size", 0), ("stopping_step", 1.5), ("worker", -1)],
)
def test_recbole_training_options_are_checked_from_the_config_alone(option, value, tiny):
    tiny["config_dict"][option] = value
    with pytest.raises(ValueError, match=f"config option '{option}' must be"):
        check_options(Config(model="BPR", **tiny))


def test_the_decoupling_options_are_checked_from_the_config_alone_for_the_models_that_train_them(tiny):
    # hidden_size: EndoSASRec's encoder must match the tiny towers' last size (8), also checked early.
    tiny["config_dict"].update(ssl_temperature=0, hidden_size=8)
    for model in ("EndoDecouple", "EndoSASRec"):
        config = Config(model=model, **tiny)
        with pytest.raises(ValueError, match="config option 'ssl_temperature' must be a number in \\(0, inf\\]"):
            check_options(config)
    check_options(Config(model="TwoTowerSplit", **tiny))  # trains no decoupling terms: not its option
