import math

import torch
import torch.nn.functional as F

from recbole_endo.data.interactions import grade_labels
from recbole_endo.model.losses import (
    batch_normalised,
    complementary_field_masks,
    fake_negative_mask,
    LowerGradeSampler,
    graded_bpr_loss,
    info_nce,
    orthogonal_component,
    truncated_cosine_loss,
)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float), dim=-1)


def test_fake_negative_mask_removes_exactly_the_negatives_with_the_anchors_key():
    # rows 0 and 2 share a side value (key 7), rows 1 and 3 have values of their own
    mask = fake_negative_mask(torch.tensor([7, 3, 7, 5]))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 2] = expected[2, 0] = True
    assert torch.equal(mask, expected)


def test_info_nce_equals_a_hand_computation_on_3x3():
    anchor = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    positive = unit([1.0, 0.0], [1.0, 1.0], [0.0, 1.0])
    tau = 0.5
    cos = anchor @ positive.T
    expected = sum(-math.log(math.exp(cos[i, i] / tau) / sum(math.exp(cos[i, j] / tau) for j in range(3))) for i in range(3)) / 3
    assert math.isclose(info_nce(anchor, positive, tau).item(), expected, rel_tol=1e-6)


def test_info_nce_ignores_masked_negatives():
    anchor = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    positive = unit([1.0, 0.0], [1.0, 1.0], [0.0, 1.0])
    tau = 0.5
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 2] = True
    cos = anchor @ positive.T
    row0 = -math.log(math.exp(cos[0, 0] / tau) / (math.exp(cos[0, 0] / tau) + math.exp(cos[0, 1] / tau)))
    rows12 = [
        -math.log(math.exp(cos[i, i] / tau) / sum(math.exp(cos[i, j] / tau) for j in range(3))) for i in (1, 2)
    ]
    assert math.isclose(info_nce(anchor, positive, tau, mask).item(), (row0 + sum(rows12)) / 3, rel_tol=1e-6)


def test_truncated_cosine_loss_is_zero_above_margin_and_squared_gap_below():
    s = unit([1.0, 0.0], [1.0, 0.0])
    above = unit([0.8, 0.6], [1.0, 0.0])  # cos 0.8 and 1.0, margin 0.5
    assert truncated_cosine_loss((above * s).sum(-1), 0.5).item() == 0.0
    below = unit([0.2, math.sqrt(1 - 0.04)], [-0.6, 0.8])  # cos 0.2 and -0.6
    expected = ((0.5 - 0.2) ** 2 + (0.5 + 0.6) ** 2) / 2
    assert math.isclose(truncated_cosine_loss((below * s).sum(-1), 0.5).item(), expected, rel_tol=1e-5)


def test_orthogonal_component_is_the_atoms_unit_part_orthogonal_to_its_side():
    # a = (1, 1, 0)/sqrt2 against s = (1, 0, 0): a - (a.s)s = (0, 1/sqrt2, 0), normalised (0, 1, 0);
    # a = (0.6, 0, 0.8) against s = (0, 0, 1): (0.6, 0, 0) -> (1, 0, 0)
    a = unit([1.0, 1.0, 0.0], [0.6, 0.0, 0.8])
    s = unit([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    assert torch.allclose(orthogonal_component(a, s), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-6)


def test_batch_normalised_weights_average_one_and_carry_no_gradient():
    cos = torch.tensor([0.1, 0.5, 0.9], requires_grad=True)
    weight = batch_normalised(torch.exp(-cos))
    assert not weight.requires_grad
    assert math.isclose(weight.mean().item(), 1.0, rel_tol=1e-6)
    assert weight[0] > weight[1] > weight[2]


def test_grades_follow_rating_thresholds():
    ratings = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert grade_labels(ratings, [3]).tolist() == [1, 1, 2, 2]
    assert grade_labels(ratings, [2, 4]).tolist() == [1, 2, 2, 3]


def test_graded_bpr_orders_pairs_and_weighs_them_by_gain_difference():
    pos = torch.tensor([2.0, 2.0], requires_grad=True)
    neg = torch.tensor([0.0, 0.0])
    grades = torch.tensor([2, 1])
    loss = graded_bpr_loss(pos, neg, grades)
    loss.backward()
    # gains 3 and 1, normalised to mean 1: weights 1.5 and 0.5
    expected = -(1.5 * F.logsigmoid(torch.tensor(2.0)) + 0.5 * F.logsigmoid(torch.tensor(2.0))) / 2
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-6)
    assert pos.grad[0] < pos.grad[1] < 0  # both pushed up, the grade-2 positive harder
    # a correctly ordered pair costs less than a reversed one
    assert graded_bpr_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1])) < graded_bpr_loss(
        torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([1])
    )


def test_graded_bpr_with_equal_grades_is_plain_bpr():
    pos, neg = torch.tensor([1.0, -0.5, 0.3]), torch.tensor([0.2, 0.1, 0.9])
    plain = -F.logsigmoid(pos - neg).mean()
    assert math.isclose(graded_bpr_loss(pos, neg, torch.ones(3)).item(), plain.item(), rel_tol=1e-6)


def test_within_user_pairs_add_the_higher_over_lower_pair_weighted_by_gain_difference_and_count():
    # row 0: grade 2 over a negative (score 1 vs 0) and over one of the user's 3 grade-1 items
    # (1 vs 0.5), which stands for all 3; row 1: grade 1, no lower-graded item (count 0).
    pos, neg = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    lower_score, lower_grade, lower_count = torch.tensor([0.5, 9.0]), torch.tensor([1, 1]), torch.tensor([3, 0])
    loss = graded_bpr_loss(pos, neg, torch.tensor([2, 1]), None, lower_score, lower_grade, lower_count, 0.5)
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    scale = (3 + 1) / 2  # mean gain of the negative pairs
    negatives = -(3 * ls(1.0) + 1 * ls(2.0)) / 2
    within = -(0.5 * (3 - 1) * 3 * ls(0.5) + 0) / 2
    assert math.isclose(loss.item(), (negatives + within) / scale, rel_tol=1e-6)
    # weight 0 is the positive-vs-negative objective alone
    alone = graded_bpr_loss(pos, neg, torch.tensor([2, 1]))
    assert graded_bpr_loss(pos, neg, torch.tensor([2, 1]), None, lower_score, lower_grade, lower_count, 0.0) == alone


def test_within_user_pairs_drawn_by_the_sampler_sum_in_expectation_to_every_pair_of_different_grades():
    # Three users, ratings graded with thresholds [3, 5] (grades 1, 2, 3; gains 1, 3, 7):
    # user 1: items 1 (rating 5, grade 3), 2 (4, grade 2), 3 (2, grade 1), 4 (1, grade 1);
    # user 2: items 5 (3, grade 2), 6 (1, grade 1); user 3: item 7 (4, grade 2) alone.
    users = torch.tensor([1, 1, 1, 1, 2, 2, 3])
    items = torch.tensor([1, 2, 3, 4, 5, 6, 7])
    grades = grade_labels(torch.tensor([5.0, 4.0, 2.0, 1.0, 3.0, 1.0, 4.0]), [3, 5])
    scores = torch.zeros(4, 8)
    scores[1, 1:5] = torch.tensor([2.0, 1.0, 0.5, -1.0])
    scores[2, 5:7] = torch.tensor([0.3, 0.8])
    scores[3, 7] = 1.0
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    # Every ordered pair of different grades of a user, by hand: (gain difference, score difference)
    pairs = [(7 - 3, 1.0), (7 - 1, 1.5), (7 - 1, 3.0), (3 - 1, 0.5), (3 - 1, 2.0), (3 - 1, -0.5)]
    full_sum = sum(-weight * ls(gap) for weight, gap in pairs)

    sampler = LowerGradeSampler(users, items, grades, n_users=4)
    torch.manual_seed(0)
    draws = 4000
    rows = users.repeat(draws)
    lower, lower_grade, lower_count = sampler(rows, grades.repeat(draws))
    assert lower_count[:7].tolist() == [3, 2, 0, 0, 1, 0, 0]  # items of a lower grade, per row
    pos = scores[rows, items.repeat(draws)]
    no_negative_pair = pos  # a negative scored as the positive: its pair is the same log 2 in both losses
    with_within, without = (
        graded_bpr_loss(pos, no_negative_pair, grades.repeat(draws), None, scores[rows, lower], lower_grade,
                        lower_count, within_user_weight)
        for within_user_weight in (1.0, 0.0)
    )
    scale = grades.repeat(draws).float().exp2().sub(1).mean().item()
    # The loss is a mean over rows, divided by the negative pairs' mean gain: undo both, per draw.
    within_per_draw = (with_within - without).item() * scale * len(rows) / draws
    assert math.isclose(within_per_draw, full_sum, rel_tol=0.03)


def test_info_nce_and_fake_masks_of_stacked_problems_equal_each_problem_solved_alone():
    torch.manual_seed(0)
    anchors, positives = torch.randn(3, 6, 4), torch.randn(3, 6, 4)
    keys = torch.arange(18).view(3, 6)
    keys[1, 4] = keys[1, 2]  # a fake negative in the second problem only
    masks = fake_negative_mask(keys)
    assert masks.shape == (3, 6, 6) and masks[1, 2, 4] and masks[1, 4, 2] and masks.sum() == 2
    for problem in range(3):
        assert torch.equal(masks[problem], fake_negative_mask(keys[problem]))
    stacked = info_nce(anchors, positives, 0.2, masks)
    alone = torch.stack([info_nce(anchors[i], positives[i], 0.2, masks[i]) for i in range(3)])
    assert stacked.shape == (3,)
    assert torch.allclose(stacked, alone, atol=1e-6)


def test_complementary_field_masks_split_every_row_into_two_non_empty_disjoint_halves():
    torch.manual_seed(0)
    masks = complementary_field_masks(rows=500, fields=3)
    assert masks.shape == (2, 500, 3)
    assert torch.equal(masks[0], ~masks[1])  # each field is known to exactly one view
    assert masks.any(-1).all()  # neither view of any row is empty
    # every field lands in the first view about half the time, and splits vary between rows
    assert torch.allclose(masks[0].float().mean(0), torch.full((3,), 0.5), atol=0.08)
    assert len({tuple(row) for row in masks[0].tolist()}) == 6  # all 2^3 - 2 non-trivial splits
