"""RecBole 1.2.1's ``Config`` with the failures the plugin's runs would meet fixed, in a subclass
(:class:`FixedRecBoleConfig`, the base of the plugin's :class:`recbole_endo.config.Config`);
RecBole's own class is left as it is.

- A distributed process without CUDA: RecBole joins every distributed process with ``nccl`` on
  GPU ``local_rank``, which fails without CUDA; here it joins with ``gloo`` and runs on the CPU.
- A config file that is missing or not YAML: RecBole reads the file's text and names a YAML
  error's place in "<unicode string>", or fails on a missing file with a bare FileNotFoundError;
  here a ValueError names the file, and the line and column.
- No model or dataset given: RecBole fails with a KeyError; here a ValueError names the option.
- A sequential model trained with CE over all items (SASRec and most of RecBole's sequential
  models by default): RecBole refuses sampled training negatives for it, and its own default
  samples them; here the default samples none, unless the user's options ask for them.
- ml-100k: RecBole reads it from its wheel whatever ``data_path`` says; here a ``data_path`` the
  user gives (a cold-start split of ml-100k, ``recbole_endo.data.cold_start``) is honoured, as
  for any other dataset.
"""

import os

import torch
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType


def read_options_file(file, loader):
    """The options of YAML file ``file`` read with RecBole's ``loader`` (an empty file: none), or
    a ValueError naming the file: missing, not YAML (with the line and column) or not a mapping."""
    try:
        with open(file, encoding="utf-8") as stream:
            options = yaml.load(stream, Loader=loader)
    except FileNotFoundError:
        raise ValueError(f"config file '{file}' does not exist") from None
    except yaml.YAMLError as error:
        problem, context = getattr(error, "problem", None), getattr(error, "context", None)
        if problem is None:  # no place to name
            raise ValueError(f"config file '{file}' is not valid YAML: {' '.join(str(error).split())}") from None
        what = f"{_at(error.problem_mark)}: {problem}"
        if context:  # e.g. "while parsing a flow sequence", where the bracket opened
            what += f" ({context}{_at(error.context_mark)})"
        raise ValueError(f"config file '{file}' is not valid YAML{what}; correct the file there") from None
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(
            f"config file '{file}' holds a YAML {type(options).__name__}, not options: "
            "write one 'option: value' per line"
        )
    return options


def _at(mark):
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


class FixedRecBoleConfig(RecBoleConfig):
    """RecBole's Config with the fixes of this module's docstring."""

    def _load_config_files(self, file_list):
        """RecBole's, with errors that name the file (:func:`read_options_file`): RecBole reads a
        file's text and names a YAML error's place in "<unicode string>"."""
        options = {}
        for file in file_list or []:
            options.update(read_options_file(file, self.yaml_loader))
        return options

    def _update_internal_config_dict(self, file):
        options = read_options_file(file, self.yaml_loader)
        self.internal_config_dict.update(options)
        return options

    def _get_model_and_dataset(self, model, dataset):
        """RecBole's, failing with a ValueError (RecBole's KeyError) when no model or dataset is given."""
        try:
            return super()._get_model_and_dataset(model, dataset)
        except KeyError:
            missing = "model" if model is None and "model" not in self.external_config_dict else "dataset"
            raise ValueError(
                f"no {missing} given: name it with --{missing}=NAME or '{missing}: NAME' in a config file"
            ) from None

    def _set_default_parameters(self):
        """RecBole's, with no sampled training negatives by default for a sequential model trained
        with CE, and ml-100k read from the ``data_path`` the user gives."""
        options = self.final_config_dict
        if (
            self.model_class.type == ModelType.SEQUENTIAL
            and options.get("loss_type") == "CE"
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            options["train_neg_sample_args"] = None
        super()._set_default_parameters()
        if self.dataset == "ml-100k" and "data_path" in self.external_config_dict:
            options["data_path"] = os.path.join(self.external_config_dict["data_path"], self.dataset)

    def _init_device(self):
        """RecBole's ``_init_device``, except that a distributed process without CUDA joins its
        process group with ``gloo`` and runs on the CPU.

        RecBole joins every distributed process (one with ``local_rank``) with ``nccl`` on GPU
        ``local_rank``, which fails without CUDA.
        """
        options = self.final_config_dict
        if "local_rank" not in options:
            return super()._init_device()
        # RecBole's single-process set-up picks the device: CUDA when gpu_id names one and CUDA is
        # available (it sets CUDA_VISIBLE_DEVICES before anything starts CUDA). It resets local_rank.
        local_rank = options.pop("local_rank")
        super()._init_device()
        options["local_rank"] = local_rank
        if options["device"].type == "cuda":
            return super()._init_device()  # RecBole's own: nccl, one GPU per process
        torch.distributed.init_process_group(
            backend="gloo",
            rank=local_rank + options["offset"],
            world_size=options["world_size"],
            init_method=f"tcp://{options['ip']}:{options['port']}",
        )
        options["single_spec"] = False
        if local_rank != 0:
            # As RecBole's: only the first process of each machine logs.
            options.update(state="error", show_progress=False, verbose=False)
