"""Evaluation protocols beyond RecBole's full ranking, run on the best model after RecBole's test.

- ``list_eval: sampled`` (graded lists, the design's protocol): each test user's list is their test items,
  graded by ``grade_thresholds`` (ml-100k: rating >= 3 → 2, else 1), plus ``list_negatives``
  items the user never interacted with (in any split), sampled uniformly with the run's seed,
  graded 0.
- ``list_eval: exposed`` (the unbiased exposure test, such as Coat's): each test user's list is all
  their randomly exposed test items, graded ``max(0, rating − relevance_threshold + 1)``, so an
  item is relevant when its rating reaches ``relevance_threshold``: the standard protocol, the one
  the debiasing literature's published numbers use. ``exposed_unselected: True`` reports beside it
  the variant ``exposed_unselected``, whose lists drop the items the user also has in the training
  or validation split (on Coat, the random items the user also self-selected): the model has seen
  those pairs with their rating, so only the variant cannot be passed by remembering them.
- ``head_share`` (popularity strata): full ranking over all items, history masked as RecBole
  masks it, where only the test items of one stratum count; the other stratum's test items are
  removed from the ranking, so neither stratum is penalised for the other's true items. Head =
  the most popular items (training counts) that together hold ``head_share`` of the training
  interactions; tail = the rest.
- ``cold_eval`` (cold start, e.g. on a ``recbole_endo.data.cold_start`` split); cold = without a
  training interaction. ``item``: each stratum is ranked on its own, the cold test items among
  all cold items and the warm test items among all warm items (history masked), as cold-start
  papers rank new items: the question is whether side information orders items no model has
  seen, not whether they beat trained ids. ``user``: full ranking over all items, the cold
  users' test items and the warm users' reported apart.

In a list or a full ranking, items are ranked by the model's score, tied scores in one fixed
random order of the items (not by item id, which RecBole assigns in order of first appearance);
binary NDCG and Recall come from RecBole's own metric classes (relevant: grade > 0), graded NDCG
(gain 2^grade − 1) from :class:`GradedNDCG` and each user's AUC from :class:`ListAUC`, which are
registered with RecBole's metric registry.
Users without a relevant item in their list (or stratum) are left out, as RecBole leaves out
users without test items.
"""

import inspect
from collections import OrderedDict

import numpy as np
import torch
from recbole.config import Config as RecBoleConfig
from recbole.data.interaction import Interaction
from recbole.evaluator import register
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.evaluator import Evaluator
from recbole.utils import ModelType

from recbole_endo.data.interactions import grade_labels, trained_entities
from recbole_endo.evaluation.metrics import ListMetric
from recbole_endo.options import check_raw_ratings, number_option, numbers_option, sizes_option

LIST_PROTOCOLS = ("none", "sampled", "exposed")
UNSELECTED = "exposed_unselected"  # the exposed test without the user's history pairs, reported beside it
COLD_EVAL_ENTITIES = ("none", "item", "user")
COLD_STRATA = ("cold", "warm")  # the key prefixes of cold_start_evaluation's metrics
EXTRA_PROTOCOLS_OFF = {"list_eval": "none", "head_share": None, "cold_eval": "none"}


class StructKeepingEvaluator(Evaluator):
    """RecBole's Evaluator, keeping the DataStruct it last evaluated (``last_struct``), so a run can
    read each user's metric values of its test evaluation (:func:`full_sort_per_user`)."""

    def evaluate(self, dataobject):
        self.last_struct = dataobject
        return super().evaluate(dataobject)


def full_sort_per_user(config, evaluator, eval_data):
    """Each user's value of RecBole's per-user metrics (:func:`per_user_values`) in the evaluation
    ``evaluator`` last ran, over ``eval_data``, as ``{key: (internal user ids, values)}``.

    A full sort ranks one row per user of its ``uid_list``; RecBole's sequential full sort ranks
    the split's rows in order, one per user under leave-one-out. Empty where the rows cannot be
    named: rows that are not one per user, or an evaluation spread over DDP processes."""
    struct = getattr(evaluator, "last_struct", None)
    users = getattr(eval_data, "uid_list", None)
    if users is None and getattr(eval_data, "is_sequential", False):
        split = eval_data._dataset
        users = split.inter_feat[split.uid_field].numpy()
        if len(np.unique(users)) != len(users):
            return {}
    if struct is None or users is None or "rec.topk" not in struct or not config["single_spec"]:
        return {}
    users = np.asarray(users)
    values = per_user_values(config, struct)
    if any(len(rows) != len(users) for rows in values.values()):
        return {}
    return {key: (users, rows) for key, rows in values.items()}


def _history(splits, users, n_items):
    """``[len(users), n_items]`` bool: what each user has in the given splits."""
    seen = np.zeros((len(users), n_items), dtype=bool)
    for split in splits:
        matrix = split.inter_matrix(form="csr")[users]
        rows, cols = matrix.nonzero()
        seen[rows, cols] = True
    return torch.from_numpy(seen)


@torch.no_grad()
def score_all_items(model, dataset, users, batch_size=256):
    """``[len(users), n_items]`` scores of every item for each user, in eval mode."""
    model.eval()
    uid_field = dataset.uid_field
    rows = []
    for start in range(0, len(users), batch_size):
        batch = torch.as_tensor(users[start : start + batch_size])
        interaction = dataset.join(Interaction({uid_field: batch})).to(model.device)
        try:
            scores = model.full_sort_predict(interaction)
        except NotImplementedError:  # as RecBole's trainer does for models without full sorting
            pairs = Interaction({
                uid_field: batch.repeat_interleave(dataset.item_num),
                dataset.iid_field: torch.arange(dataset.item_num).repeat(len(batch)),
            })
            scores = model.predict(dataset.join(pairs).to(model.device))
        rows.append(scores.view(len(batch), -1).float().cpu())
    return torch.cat(rows)


@torch.no_grad()
def score_test_rows(model, splits, users, batch_size=256):
    """``[len(users), n_items]`` scores of every item for each of ``users``, in eval mode: a
    general model scores the user (:func:`score_all_items`); a sequential one the user's row of
    the last split, its sequence before that split's target (one row per user under RecBole's
    leave-one-out split, which :func:`check_evaluation_options` asks for)."""
    if model.type != ModelType.SEQUENTIAL:
        return score_all_items(model, splits[0], users, batch_size)
    split = splits[-1]
    row_of = {user: row for row, user in enumerate(split.inter_feat[split.uid_field].tolist())}
    rows = torch.tensor([row_of[user] for user in users], dtype=torch.long)
    model.eval()
    scores = [model.full_sort_predict(split[chunk].to(model.device)).view(len(chunk), -1) for chunk in rows.split(batch_size)]
    return torch.cat(scores).float().cpu()


def per_user_values(config, struct):
    """Each row's (user's) value of every per-user metric of ``config['metrics']`` (RecBole's top-k
    metrics and the list metrics) at each ``config['topk']`` cutoff, ``{key: ndarray}``, keyed as RecBole
    keys the means (``ndcg@10``), which average these. Other metrics (item coverage, ...) have no
    per-user value and are left out."""
    RecBoleConfig.compatibility_settings(None)  # RecBole's metric classes use numpy's old aliases
    values = {}
    for name in config["metrics"]:
        metric = register.metrics_dict[name.lower()](config)
        if isinstance(metric, ListMetric):
            values.update(metric.per_user(struct))
        elif isinstance(metric, TopkMetric):
            # RecBole's top-k metrics take (pos_index) or (pos_index, pos_len), as they need.
            arguments = metric.used_info(struct)[: len(inspect.signature(metric.metric_info).parameters)]
            rows = metric.metric_info(*arguments)
            values.update({f"{name.lower()}@{k}": rows[:, k - 1] for k in config["topk"]})
    return values


def _evaluate(metrics, topk, rec, users=None, per_user=None):
    """RecBole's Evaluator over a DataStruct holding ``rec`` (name → tensor). With a ``per_user``
    dict, each row's value of each metric goes in it too, as ``per_user[key] = (users, values)``:
    ``users`` names the rows."""
    RecBoleConfig.compatibility_settings(None)
    struct = DataStruct()
    for name, tensor in rec.items():
        struct.set(name, tensor)
    options = {"metrics": metrics, "topk": topk, "metric_decimal_place": 4}
    if per_user is not None:
        for key, values in per_user_values(options, struct).items():
            defined = ~np.isnan(values)  # a list metric's users without a value (ListAUC)
            per_user[key] = (np.asarray(users)[defined], values[defined])
    return Evaluator(options).evaluate(struct)


def _ranked(scores):
    """Column indices of ``[users, n]`` scores from best to worst, tied scores in one fixed random
    order of the columns. Not by index: RecBole numbers items in order of first appearance in the
    data, so item id order carries popularity (a model that ties all cold items, such as Pop,
    would rank them by it), and a candidate list puts its test items first."""
    shuffle = torch.randperm(scores.shape[1], generator=torch.Generator().manual_seed(0))
    return shuffle[scores[:, shuffle].argsort(dim=1, descending=True, stable=True)]


def _topk_struct(order, relevant, topk):
    """RecBole's ``rec.topk`` of a ranking ``order`` (:func:`_ranked`): relevance of the top-k
    items, then the relevant count."""
    top = order[:, : max(topk)]
    return torch.cat([relevant.gather(1, top).int(), relevant.sum(1, keepdim=True).int()], dim=1)


def rank_lists(scores, grades, topk, users=None, per_user=None, listed=None):
    """Metrics of ranked candidate lists: ``scores`` and ``grades`` are ``[users, list length]``
    (padding: score −inf, grade 0, and False in ``listed``; None: nothing padded). Returns NDCG@k
    and Recall@k (relevant: grade > 0, RecBole's classes), GradedNDCG and ListAUC, over users with
    a relevant item; with ``per_user``, their values per user (named by ``users``, one per row) as
    :func:`_evaluate` gives them."""
    listed = torch.ones_like(grades, dtype=torch.bool) if listed is None else listed
    keep = (grades > 0).any(1)
    scores, grades, listed = scores[keep], grades[keep], listed[keep]
    short = max(topk) - scores.shape[1]
    if short > 0:  # RecBole's top-k metrics need at least max(topk) ranked entries
        scores = torch.nn.functional.pad(scores, (0, short), value=-torch.inf)
        grades = torch.nn.functional.pad(grades, (0, short))
        listed = torch.nn.functional.pad(listed, (0, short))
    order = _ranked(scores)
    rec = {
        "rec.topk": _topk_struct(order, grades > 0, topk),
        "rec.graded": grades.gather(1, order),
        "rec.listed": listed.gather(1, order),
    }
    return _evaluate(["NDCG", "Recall", "GradedNDCG", "ListAUC"], topk, rec, _kept(users, keep), per_user)


def _kept(users, keep):
    return None if users is None else np.asarray(users)[keep.numpy()]


def _prefixed(prefix, per_user, rows):
    """``rows`` (a per-user dict) into ``per_user`` with each key prefixed, as the means are."""
    if per_user is not None:
        per_user.update({f"{prefix}:{key}": value for key, value in rows.items()})


def _test_users_and_items(test_split):
    users = test_split.inter_feat[test_split.uid_field].numpy()
    items = test_split.inter_feat[test_split.iid_field].numpy()
    return users, items


def _padded(lists, fill):
    width = max(len(row) for row in lists)
    return torch.tensor([list(row) + [fill] * (width - len(row)) for row in lists])


def candidate_lists(config, splits, protocol=None):
    """Per test user, ``(users, items, grades)`` of the list protocol (``list_eval``'s, or
    ``protocol``: ``exposed_unselected``), padded with item 0 (RecBole's padding id) and grade 0:
    the lists of the test split (``splits[-1]``), with the earlier splits as the users' history.
    Validation passes ``(train, valid)``: the lists of the validation split, with the training
    split as history (Coat's training and validation ratings share no pair, so both exposed
    protocols give it the same validation lists)."""
    *history_splits, test_split = splits
    protocol = protocol or config["list_eval"]
    users, items = _test_users_and_items(test_split)
    ratings = test_split.inter_feat[config["RATING_FIELD"]].float()
    if protocol == "sampled":
        grades = grade_labels(ratings, config["grade_thresholds"]).numpy()
    else:
        grades = (ratings - config["relevance_threshold"] + 1).clamp(min=0).round().long().numpy()
    list_users = np.unique(users)
    n_items = test_split.item_num
    history = _history(history_splits, list_users, n_items)
    row_of = {user: row for row, user in enumerate(list_users)}
    item_rows = [[] for _ in list_users]
    grade_rows = [[] for _ in list_users]
    for user, item, grade in zip(users, items, grades):
        row = row_of[user]
        if protocol == UNSELECTED and history[row, item]:
            continue
        item_rows[row].append(int(item))
        grade_rows[row].append(int(grade))
    if protocol == "sampled":
        negatives = config["list_negatives"]
        rng = np.random.default_rng(config["seed"])
        interacted = history | _history([test_split], list_users, n_items)
        interacted[:, 0] = True  # the padding id is not an item
        for row in range(len(list_users)):
            candidates = np.flatnonzero(~interacted[row].numpy())
            sampled = rng.choice(candidates, size=min(negatives, len(candidates)), replace=False)
            item_rows[row] += sampled.tolist()
            grade_rows[row] += [0] * len(sampled)
    return torch.from_numpy(list_users), _padded(item_rows, 0), _padded(grade_rows, 0)


def list_evaluation(config, model, splits, per_user=None, lists=None, protocol=None):
    """Metrics of the list protocol (``list_eval``'s, or ``protocol``) on the lists of
    :func:`candidate_lists` (or the ``lists`` it returned for these splits before), keys prefixed
    by the protocol (``exposed:ndcg@5``, ``exposed_unselected:ndcg@5``); with a ``per_user``
    dict, their per-user values go in it under the same keys."""
    protocol = protocol or config["list_eval"]
    users, items, grades = candidate_lists(config, splits, protocol) if lists is None else lists
    scores = score_test_rows(model, splits, users.numpy()).gather(1, items)
    scores[(items == 0)] = -torch.inf
    rows = {}
    result = rank_lists(scores, grades, config["list_topk"], users.numpy(), rows, listed=items != 0)
    _prefixed(protocol, per_user, rows)
    return OrderedDict((f"{protocol}:{key}", value) for key, value in result.items())


def head_items(item_counts, head_share):
    """Bool mask of the most popular items that together hold ``head_share`` of the counts
    (the item that crosses the share is included)."""
    order = np.argsort(-item_counts, kind="stable")
    cumulative = np.cumsum(item_counts[order])
    n_head = int(np.searchsorted(cumulative, head_share * cumulative[-1])) + 1
    head = np.zeros(len(item_counts), dtype=bool)
    head[order[:n_head]] = True
    return head


def stratum_metrics(scores, removed, relevant, topk, users=None, per_user=None):
    """NDCG@k and Recall@k of a full ranking without the ``removed`` items, where the
    ``relevant`` items count; all arguments are ``[users, n_items]`` (masks may broadcast).
    Users without a relevant item are left out. ``users`` and ``per_user`` as for :func:`rank_lists`."""
    relevant = relevant.expand_as(scores)
    keep = relevant.any(1)
    scores = scores.masked_fill(removed, -torch.inf)[keep]
    rec = {"rec.topk": _topk_struct(_ranked(scores), relevant[keep], topk)}
    return _evaluate(["NDCG", "Recall"], topk, rec, _kept(users, keep), per_user)


def full_ranking(model, splits):
    """The last split's users and, ``[users, n_items]`` each, their scores of every item, the
    history their ranking leaves out, and their items in the last split: what every stratified
    full ranking starts from. ``splits`` is (train, valid, test) to test and (train, valid) to
    validate. The history is the earlier splits' items, as RecBole's full sort masks them; none
    for a sequential model, whose full sort in RecBole masks nothing (a user may come back to an
    item)."""
    *earlier, last = splits
    test_users, test_items = _test_users_and_items(last)
    users = np.unique(test_users)
    scores = score_test_rows(model, splits, users)
    n_items = splits[0].item_num
    if model.type == ModelType.SEQUENTIAL:
        history = torch.zeros(len(users), n_items, dtype=torch.bool)
    else:
        history = _history(earlier, users, n_items)
    history[:, 0] = True  # RecBole's padding id is no item; its full sort masks it as well
    positives = torch.zeros_like(history)
    positives[np.searchsorted(users, test_users), test_items] = True
    return users, scores, history, positives


def popularity_strata_evaluation(config, train_split, ranking, per_user=None):
    """Head and tail full-ranking metrics at ``topk``, keys ``head:ndcg@10``, ``tail:...``, plus
    the head's number of items (``head:items``); ``ranking`` is :func:`full_ranking`'s. With a
    ``per_user`` dict, the metrics' per-user values go in it under the same keys."""
    head_share = config["head_share"]
    counts = np.zeros(train_split.item_num)
    for item, count in train_split.item_counter.items():
        counts[item] = count
    head = torch.from_numpy(head_items(counts, head_share))
    users, scores, history, positives = ranking
    result = OrderedDict({"head:items": int(head.sum())})
    for name, stratum in (("head", head), ("tail", ~head)):
        # The other stratum's positives leave the ranking: neither stratum is penalised for them.
        removed = history | (positives & ~stratum)
        rows = {}
        for key, value in stratum_metrics(scores, removed, positives & stratum, config["topk"], users, rows).items():
            result[f"{name}:{key}"] = value
        _prefixed(name, per_user, rows)
    return result


def cold_strata(entity, cold, history, positives):
    """Stratum name → (items removed from the ranking, relevant items), ``[users, n_items]`` masks.

    ``entity`` ``item``: ``cold`` is ``[n_items]``; each stratum ranks only its own items.
    ``user``: ``cold`` is ``[users]``; both rank every item, each counts its own users' test items.
    """
    if entity == "item":
        return {"cold": (history | ~cold, positives & cold), "warm": (history | cold, positives & ~cold)}
    rows = cold.unsqueeze(1)
    return {"cold": (history, positives & rows), "warm": (history, positives & ~rows)}


def cold_start_evaluation(config, train_split, ranking, per_user=None):
    """Cold and warm full-ranking metrics at ``topk``, keys ``cold:ndcg@10``, ``warm:...``, plus
    the number of cold test items (``cold:items``) or cold test users (``cold:users``);
    ``ranking`` is :func:`full_ranking`'s. ``per_user`` as for :func:`popularity_strata_evaluation`."""
    entity = config["cold_eval"]
    users, scores, history, positives = ranking
    if entity == "item":
        cold = ~trained_entities(train_split, "item")
        count = int((positives & cold).any(0).sum())
    else:
        cold = torch.tensor([train_split.user_counter[user] == 0 for user in users], dtype=torch.bool)
        count = int(cold.sum())
    result = OrderedDict({f"cold:{entity}s": count})
    for name, (removed, relevant) in cold_strata(entity, cold, history, positives).items():
        rows = {}
        for key, value in stratum_metrics(scores, removed, relevant, config["topk"], users, rows).items():
            result[f"{name}:{key}"] = value
        _prefixed(name, per_user, rows)
    return result


def validation_protocol(config):
    """The plugin protocol whose metric ``valid_metric`` names, which then scores validation on
    the validation split: ``list`` for the ``list_eval`` protocol's (``exposed:ndcg@5``,
    :func:`candidate_lists`), ``cold`` for a ``cold_eval`` stratum's (``cold:ndcg@10``,
    ``warm:recall@20``); None for a metric of RecBole's (``NDCG@10``)."""
    if ":" not in config["valid_metric"]:
        return None
    return "cold" if config["valid_metric"].lower().partition(":")[0] in COLD_STRATA else "list"


def check_evaluation_options(config, dataset):
    """Fail, naming the option, unless the extra protocols' options (``list_eval``, ``cold_eval``,
    ``head_share`` and what they read, a ``valid_metric`` of a list protocol or a cold-start
    stratum) are valid for ``dataset``: checked before training, so a typo does not cost a run."""
    validated_by = validation_protocol(config)
    if validated_by == "cold":
        _, _, metric = config["valid_metric"].lower().partition(":")
        known = [f"{name}@{k}" for name in ("ndcg", "recall") for k in config["topk"]]
        if config["cold_eval"] == "none" or metric not in known:
            raise ValueError(
                f"config option 'valid_metric' is {config['valid_metric']!r}: a cold-start stratum's metric "
                f"needs cold_eval 'item' or 'user' (it is {config['cold_eval']!r}) and a metric among {known} "
                "(topk sets the cutoffs)"
            )
    elif validated_by == "list":
        protocol, _, metric = config["valid_metric"].lower().partition(":")
        topk = config["list_topk"] or []
        known = [f"{name}@{k}" for name in ("ndcg", "recall", "gndcg") for k in topk] + ["gndcg", "auc"]
        if protocol == UNSELECTED:
            raise ValueError(
                f"config option 'valid_metric' is {config['valid_metric']!r}: {UNSELECTED} is reported on the "
                "test only; select on 'exposed:<metric>', whose validation lists are the held-out ratings"
            )
        if protocol != config["list_eval"] or metric not in known:
            raise ValueError(
                f"config option 'valid_metric' is {config['valid_metric']!r}: a list protocol's metric must be "
                f"'<list_eval>:<metric>' with list_eval {config['list_eval']!r} and a metric among {known} "
                "(list_topk sets the cutoffs); or a metric of RecBole's 'metrics', such as NDCG@10"
            )
    if config["list_eval"] not in LIST_PROTOCOLS:
        raise ValueError(f"config option 'list_eval' is {config['list_eval']!r}; use one of {', '.join(LIST_PROTOCOLS)}")
    if not isinstance(config[UNSELECTED], bool):
        raise ValueError(f"config option '{UNSELECTED}' is {config[UNSELECTED]!r}; use True or False")
    if config[UNSELECTED] and config["list_eval"] != "exposed":
        raise ValueError(
            f"config option '{UNSELECTED}' is True, which reports a variant of the exposed test beside it, "
            f"but list_eval is {config['list_eval']!r}: set list_eval: exposed, or {UNSELECTED}: False"
        )
    if config["cold_eval"] not in COLD_EVAL_ENTITIES:
        raise ValueError(f"config option 'cold_eval' is {config['cold_eval']!r}; use one of {', '.join(COLD_EVAL_ENTITIES)}")
    if config["head_share"] is not None:
        number_option(config, "head_share", 0, 1, low_open=True)
    switched_on = [option for option, off in EXTRA_PROTOCOLS_OFF.items() if config[option] != off]
    if switched_on and config["MODEL_TYPE"] == ModelType.SEQUENTIAL and "LS" not in config["eval_args"]["split"]:
        raise ValueError(
            f"config option '{switched_on[0]}' is {config[switched_on[0]]!r}: for a sequential model "
            f"({config['model']}) the plugin's extra protocols score each test user's sequence once, which "
            f"needs one test row per user, but eval_args split is {config['eval_args']['split']}: use "
            "{'LS': 'valid_and_test'} (recbole_endo/properties/sequential.yaml), or switch the option off"
        )
    if config["list_eval"] == "none":
        return
    sizes_option(config, "list_topk")
    rating_field = config["RATING_FIELD"]
    if rating_field not in dataset.field2type:
        raise ValueError(
            f"config option list_eval '{config['list_eval']}' grades test items by their rating, but the "
            f"dataset loads no '{rating_field}' field (RATING_FIELD): add it to load_col['inter']"
        )
    check_raw_ratings(config, "list_eval")
    if config["list_eval"] == "sampled":
        numbers_option(config, "grade_thresholds")
        number_option(config, "list_negatives", 1, integer=True)
    else:
        number_option(config, "relevance_threshold")


def extra_evaluation(config, model, splits, per_user=None):
    """The plugin's protocols that ``config`` switches on (``list_eval`` and ``exposed_unselected``,
    ``head_share``, ``cold_eval``; their options checked by :func:`check_evaluation_options`). With a
    ``per_user`` dict, each metric's per-user values go in it as ``key: (internal user ids, values)``."""
    result = OrderedDict()
    if config["list_eval"] != "none":
        result.update(list_evaluation(config, model, splits, per_user))
    if config[UNSELECTED]:
        result.update(list_evaluation(config, model, splits, per_user, protocol=UNSELECTED))
    if config["head_share"] is not None or config["cold_eval"] != "none":
        ranking = full_ranking(model, splits)
        if config["head_share"] is not None:
            result.update(popularity_strata_evaluation(config, splits[0], ranking, per_user))
        if config["cold_eval"] != "none":
            result.update(cold_start_evaluation(config, splits[0], ranking, per_user))
    return result
