import io

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn as nn

from recbole_endo.compat.checkpoint import plain_other_parameter, restore_other_parameter


class HoldsState(nn.Module):
    """A model keeping state outside its parameters, as RecBole's EASE, ItemKNN, Pop and SASRecF do."""

    def __init__(self, state):
        super().__init__()
        self.layer = nn.Linear(3, 2)  # an nn.Module attribute, as SASRecF's feature_embed_layer
        self.other_parameter_name = ["layer", *state]
        for key, value in state.items():
            setattr(self, key, value)

    def other_parameter(self):
        return {key: getattr(self, key) for key in self.other_parameter_name}

    def load_other_parameter(self, para):
        for key, value in para.items():
            setattr(self, key, value)


def through_safe_loader(stored):
    buffer = io.BytesIO()
    torch.save({"other_parameter": stored}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["other_parameter"]


def test_every_kind_of_state_recbole_models_keep_survives_the_safe_loader():
    dense = np.arange(6, dtype=np.float32).reshape(2, 3)
    csr = scipy.sparse.csr_matrix(np.array([[0, 1.5, 0], [2.0, 0, 0]]))
    state = {
        "item_similarity": dense,  # EASE
        "interaction_matrix": csr,  # EASE, SLIMElastic
        "w": csr.tocsc(),  # ItemKNN
        "item_cnt": torch.tensor([[3], [1]]),  # Pop
        "max_cnt": np.int64(3),
        "restore_user_e": None,  # LightGCN before its first evaluation
        "ripple_set": {7: [(np.array([1, 2]), 0.5)]},  # a dict keyed by ids, of tuples
    }
    trained = HoldsState(state)
    restored = HoldsState({key: None for key in state})
    restore_other_parameter(restored, through_safe_loader(plain_other_parameter(trained)))

    assert torch.equal(restored.layer.weight, trained.layer.weight)
    assert restored.layer is not trained.layer  # the model's own module, loaded
    assert isinstance(restored.item_similarity, np.ndarray) and restored.item_similarity.dtype == np.float32
    assert np.array_equal(restored.item_similarity, dense)
    assert restored.interaction_matrix.format == "csr" and restored.w.format == "csc"
    assert np.array_equal(restored.interaction_matrix.toarray(), [[0, 1.5, 0], [2.0, 0, 0]])
    assert np.array_equal(restored.w.toarray(), csr.toarray())
    assert torch.equal(restored.item_cnt, torch.tensor([[3], [1]]))
    assert restored.max_cnt == 3 and type(restored.max_cnt) is int
    assert restored.restore_user_e is None
    (array, weight), = restored.ripple_set[7]
    assert np.array_equal(array, [1, 2]) and weight == 0.5


def test_state_a_checkpoint_cannot_hold_as_data_is_refused_naming_the_attribute():
    model = HoldsState({"callback": object()})
    with pytest.raises(TypeError, match=r"HoldsState.other_parameter\(\)\['callback'\] holds a builtins.object"):
        plain_other_parameter(model)
