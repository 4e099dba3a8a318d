"""The design's goal-2 test: do frequent atoms pull their side representation towards themselves?

    python -m recbole_endo.experiments.analysis CHECKPOINT [--output_dir DIR] [--user_side_field F] [--item_side_field F]

For a checkpoint whose user and item towers are :class:`SplitTower` s (TwoTowerSplit,
EndoDecouple) and for each entity (user, item), every atom (internal id; RecBole's padding id 0
skipped) gets, in eval mode, ``s`` = its normalised side branch and ``a`` = its normalised atom
branch. The analysis correlates (Spearman) the atom's interaction count in the training split
with ``cos(a, s)``, over all atoms and within each value of one side field (default: the entity's
first side field in ``endo_fields``; a ``token_seq`` atom counts in the group of each of its
tokens). The design (goal 2, v1) found the correlation positive, globally and within a side value.

Writes to ``--output_dir``:

- ``goal2.json`` and ``goal2.md``: entity, group, atoms, Spearman rho, p-value; n/a for groups of
  fewer than ``MIN_GROUP_ATOMS`` atoms or with a constant input, where rho is undefined;
- ``<entity>_freq_vs_cos.png``: the scatter behind the global correlation;
- ``<entity>_pca.png``: a 2-D PCA of the side and atom representations together, coloured by side
  value.

On a generated dataset whose folder holds the generator's truth (endo-synth's
``<dataset>.truth.npz``), the report adds the weights against the true exposure: over the items
with a training interaction, Spearman's rho between each item weight the model can train with and
the true inverse propensity ``1 / pi``: ``ipw`` (``popularity^-eta``: the order of 1 / training
count) and ``endo`` (``exp(-eta cos(a, s))``: the order of −cos); rank correlation does not
depend on ``eta``.
"""

import argparse
import json
import os
import sys
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter
from recbole.utils import FeatureType
from scipy.stats import spearmanr

from recbole_endo.data.synth import load_truth, truth_file
from recbole_endo.files import open_replacing
from recbole_endo.model.towers import ENTITIES, FIELD_GROUPS, SplitTower
from recbole_endo.quick_start import load_data_and_model

MIN_GROUP_ATOMS = 5  # below this a rank correlation says nothing (n=4 has only 24 orderings)
ALL_ATOMS = "(all)"
MAX_COLOURS = 10  # side values with their own colour in the plots; the rest are drawn as "other"
OTHER = "(other)"  # parenthesised: it must not collide with a real value (ml-100k has occupation "other")


def frequency_cos_spearman(frequency, cos):
    """Spearman's rho and p-value between training frequency and ``cos(a, s)`` over some atoms.

    Returns ``(rho, p_value, note)``; rho and p-value are None, and the note says why, when there
    are fewer than ``MIN_GROUP_ATOMS`` atoms or an input is constant (rho undefined).
    """
    frequency, cos = np.asarray(frequency), np.asarray(cos)
    if len(cos) < MIN_GROUP_ATOMS:
        return None, None, f"fewer than {MIN_GROUP_ATOMS} atoms"
    for name, values in (("training frequency", frequency), ("cos(a, s)", cos)):
        if np.ptp(values) == 0:
            return None, None, f"constant {name}"
    rho, p_value = spearmanr(frequency, cos)
    return float(rho), float(p_value), ""


def exposure_rows(frequency, cos, exposure):
    """Rows of the weights against the true exposure: for ``ipw`` and ``endo``, Spearman's rho and
    p-value between the weight and ``1 / exposure`` over the items with ``frequency`` > 0 (the
    positives a weight can apply to). Arrays are per item, aligned."""
    trained = np.asarray(frequency) > 0
    inverse_propensity = 1 / np.asarray(exposure)[trained]
    weights = {"ipw": 1 / np.asarray(frequency)[trained], "endo": -np.asarray(cos)[trained]}
    rows = []
    for weight, order in weights.items():
        rho, p_value = spearmanr(order, inverse_propensity)
        rows.append({"weight": weight, "items": int(trained.sum()), "rho": float(rho), "p_value": float(p_value)})
    return rows


def split_tower(model, entity, checkpoint):
    """The model's ``entity`` tower, checked to be a SplitTower with a side and an atom branch."""
    towers = getattr(model, "towers", {})
    tower = towers[entity] if entity in towers else None
    if not isinstance(tower, SplitTower):
        raise ValueError(
            f"checkpoint '{checkpoint}' holds a {type(model).__name__} model, whose towers have no separate "
            "side and atom branches; the goal-2 analysis needs split towers (TwoTowerSplit, EndoDecouple)"
        )
    missing = [group for group in FIELD_GROUPS if group not in tower.embeddings]
    if missing:
        raise ValueError(
            f"checkpoint '{checkpoint}': the {type(model).__name__} {entity} tower has no {missing[0]} branch "
            f"(endo_fields.{entity}.{missing[0]} is empty); the goal-2 analysis compares side and atom"
        )
    return tower


def side_atom_representations(tower, n_atoms, device):
    """``s``, ``a`` (normalised side and atom branches) and ``cos(a, s)`` of atoms 1..n_atoms−1,
    as numpy arrays; the tower must be in eval mode."""
    with torch.no_grad():
        embedded = tower.embed(torch.arange(1, n_atoms, device=device))
        s, a = (F.normalize(tower.branch(group, embedded[group]), dim=-1) for group in ("side", "atom"))
        cos = (a * s).sum(-1)
    return s.cpu().numpy(), a.cpu().numpy(), cos.cpu().numpy()


def side_values(dataset, entity, field, option):
    """Per atom (ids 1..), the list of its values of the token or token_seq ``field``."""
    field_type = dataset.field2type[field]
    if field_type not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
        raise ValueError(
            f"{option} '{field}' is a {field_type.value} field; the analysis groups atoms by token values, "
            "so choose a token or token_seq side field"
        )
    table = dataset.get_user_feature() if entity == "user" else dataset.get_item_feature()
    rows = table[field][1:].reshape(len(table) - 1, -1).tolist()  # token: one value per row
    # Token id 0 is RecBole's padding: an empty cell, not a value.
    return [[str(dataset.id2token(field, token)) for token in row if token != 0] for row in rows]


def chosen_side_field(endo_fields, entity, field, option):
    """``field`` if it is one of the entity's side fields, else the first side field when None."""
    sides = endo_fields[entity]["side"]
    if field is None:
        return sides[0]
    if field not in sides:
        raise ValueError(f"{option} '{field}' is not among the checkpoint's endo_fields.{entity}.side {sides}")
    return field


def correlation_rows(entity, field, frequency, cos, values):
    """Table rows: the global correlation, then one per side value, largest groups first."""
    members = {}
    for atom, atom_values in enumerate(values):
        for value in atom_values:
            members.setdefault(value, []).append(atom)
    groups = [(ALL_ATOMS, np.arange(len(cos)))]
    groups += sorted(members.items(), key=lambda item: (-len(item[1]), item[0]))
    rows = []
    for group, atoms in groups:
        rho, p_value, note = frequency_cos_spearman(frequency[atoms], cos[atoms])
        rows.append(
            {"entity": entity, "side_field": field, "group": group, "atoms": len(atoms), "rho": rho,
             "p_value": p_value, "note": note}
        )
    return rows


def colour_labels(values):
    """One plot label per atom: its first side value (a token_seq atom may have several), values
    beyond the ``MAX_COLOURS`` most common ones (and empty cells) grouped as "other"."""
    first = [atom_values[0] if atom_values else OTHER for atom_values in values]
    common = [value for value, _ in Counter(first).most_common() if value != OTHER][:MAX_COLOURS]
    return [value if value in common else OTHER for value in first], common


# The plots are matplotlib Figures built without pyplot: no global backend and no display, and
# savefig renders PNG through matplotlib's Agg canvas.


def colours(labels, common):
    palette = dict(zip(common, colormaps["tab10"].colors))
    return [palette.get(label, "lightgrey") for label in labels]


def legend(axes, common, labels, title):
    handles = [Line2D([], [], marker="o", linestyle="", color=colour) for colour in colours(common, common)]
    names = list(common)
    if OTHER in labels:
        handles.append(Line2D([], [], marker="o", linestyle="", color="lightgrey"))
        names.append(OTHER)
    axes.legend(handles, names, title=title, fontsize="small", loc="best", framealpha=0.7)


def plot_frequency_vs_cos(entity, legend_title, frequency, cos, labels, common, global_row):
    figure = Figure(figsize=(7, 5))
    axes = figure.subplots()
    # 1 + count: atoms never seen in training stay on the log axis.
    axes.scatter(frequency + 1, cos, s=8, alpha=0.6, c=colours(labels, common), linewidths=0)
    axes.set_xscale("log")
    # Plain numbers (20, 50, 100): the default 2×10^1 labels overlap when the axis spans few decades.
    axes.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    axes.set_xlabel(f"1 + training interactions of the {entity} (log)")
    axes.set_ylabel("cos(atom repr, side repr)")
    rho = "n/a" if global_row["rho"] is None else f"{global_row['rho']:+.3f}"
    axes.set_title(f"{entity}s: Spearman rho = {rho} over {global_row['atoms']} atoms")
    legend(axes, common, labels, legend_title)
    figure.tight_layout()
    return figure


def pca_2d(points):
    """The points projected on their first two principal components, and those components'
    shares of the variance."""
    centred = points - points.mean(axis=0)
    _, singular_values, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T, singular_values[:2] ** 2 / (singular_values**2).sum()


def plot_pca(entity, legend_title, s, a, labels, common):
    # Atoms sharing their side inputs share one side representation: plot each distinct one once
    # (rounded, as one batched forward pass may give equal inputs outputs differing in the last bits).
    _, side_atoms = np.unique(s.round(4), axis=0, return_index=True)
    projected, shares = pca_2d(np.concatenate([s[side_atoms], a]))
    side_points, atom_points = projected[: len(side_atoms)], projected[len(side_atoms) :]
    figure = Figure(figsize=(7, 6))
    axes = figure.subplots()
    axes.scatter(*atom_points.T, s=8, alpha=0.5, c=colours(labels, common), linewidths=0, label="atom")
    side_labels = [labels[atom] for atom in side_atoms]
    axes.scatter(*side_points.T, s=70, marker="X", c=colours(side_labels, common), edgecolors="black",
                 linewidths=0.6, label="side")
    axes.set_xlabel(f"PC1 ({shares[0]:.0%} of variance)")
    axes.set_ylabel(f"PC2 ({shares[1]:.0%} of variance)")
    axes.set_title(f"{entity}s: {len(a)} atom (dots) and {len(side_atoms)} distinct side (X) representations")
    legend(axes, common, labels, legend_title)
    figure.tight_layout()
    return figure


def markdown_table(rows):
    lines = ["| entity | group | atoms | Spearman rho | p-value | note |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        group = row["group"] if row["group"] == ALL_ATOMS else f"{row['side_field']}={row['group']}"
        rho = "n/a" if row["rho"] is None else f"{row['rho']:+.3f}"
        p_value = "n/a" if row["p_value"] is None else f"{row['p_value']:.2g}"
        lines.append(f"| {row['entity']} | {group} | {row['atoms']} | {rho} | {p_value} | {row['note']} |")
    return "\n".join(lines) + "\n"


def analyse(checkpoint, output_dir, side_fields=None):
    """Run the goal-2 analysis on ``checkpoint`` and write its table and plots to ``output_dir``.

    Args:
        checkpoint (str): a checkpoint written by the plugin (loaded with the safe loader).
        output_dir (str): folder for goal2.json, goal2.md and the PNGs (created if missing).
        side_fields (dict, optional): ``{entity: field}``, the side field to group by; default the
            entity's first side field.

    Returns:
        list: the table rows (dicts), as written to goal2.json.
    """
    side_fields = side_fields or {}
    config, model, _, train_data, _, _ = load_data_and_model(checkpoint)
    model.eval()
    dataset = train_data.dataset  # the training split: its counters are the training frequencies
    towers = {entity: split_tower(model, entity, checkpoint) for entity in ENTITIES}
    fields = {
        entity: chosen_side_field(model.endo_fields, entity, side_fields.get(entity), f"--{entity}_side_field")
        for entity in ENTITIES
    }
    rows, figures = [], {}
    for entity in ENTITIES:
        field = fields[entity]
        values = side_values(dataset, entity, field, f"--{entity}_side_field")
        s, a, cos = side_atom_representations(towers[entity], len(values) + 1, model.device)
        counter = getattr(dataset, f"{entity}_counter")
        frequency = np.array([counter.get(atom, 0) for atom in range(1, len(values) + 1)])
        entity_rows = correlation_rows(entity, field, frequency, cos, values)
        if entity == "item":
            item_frequency, item_cos = frequency, cos
        rows += entity_rows
        labels, common = colour_labels(values)
        legend_title = field if dataset.field2type[field] == FeatureType.TOKEN else f"{field} (first value)"
        figures[f"{entity}_freq_vs_cos.png"] = plot_frequency_vs_cos(
            entity, legend_title, frequency, cos, labels, common, entity_rows[0]
        )
        figures[f"{entity}_pca.png"] = plot_pca(entity, legend_title, s, a, labels, common)

    exposure = None
    if os.path.isfile(truth_file(config["data_path"], config["dataset"])):
        exposure = load_truth(config["data_path"], config["dataset"])["item_exposure"]
        raw_items = dataset.id2token(dataset.iid_field, np.arange(1, len(item_cos) + 1))
        # The generator writes item i's row of the truth under the token i + 1.
        exposure = exposure_rows(item_frequency, item_cos, exposure[raw_items.astype(int) - 1])

    os.makedirs(output_dir, exist_ok=True)
    # Each file is written whole or not at all (open_replacing), the tables last.
    for name, figure in figures.items():
        with open_replacing(os.path.join(output_dir, name), "wb") as file:
            figure.savefig(file, format="png", dpi=120)
    model_name, dataset_name = config["model"], config["dataset"]
    report = {"checkpoint": checkpoint, "model": model_name, "dataset": dataset_name,
              "side_fields": fields, "min_group_atoms": MIN_GROUP_ATOMS, "rows": rows}
    if exposure is not None:
        report["exposure"] = exposure
    with open_replacing(os.path.join(output_dir, "goal2.json")) as file:
        json.dump(report, file, indent=1)
    header = (
        f"# Goal 2: training frequency vs cos(side, atom)\n\n`{model_name}` on `{dataset_name}`, checkpoint "
        f"`{os.path.basename(checkpoint)}`. Spearman rho between each atom's interaction count in the training "
        "split and cos(atom repr, side repr), over all atoms and within each side value.\n\n"
    )
    with open_replacing(os.path.join(output_dir, "goal2.md")) as file:
        file.write(header + markdown_table(rows))
        if exposure is not None:
            file.write(
                "\n## Item weights against the generator's true exposure\n\nSpearman rho between each weight and "
                "1 / pi (pi: the item's true exposure propensity), over the items with a training interaction.\n\n"
                "| weight | items | Spearman rho | p-value |\n|---|---|---|---|\n"
                + "".join(f"| {row['weight']} | {row['items']} | {row['rho']:.3f} | {row['p_value']:.2g} |\n" for row in exposure)
            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="The design's goal-2 analysis: training frequency vs cos(side, atom).")
    parser.add_argument("checkpoint", help="a TwoTowerSplit or EndoDecouple checkpoint (saved/*.pth)")
    parser.add_argument("--output_dir", default="goal2", help="folder for goal2.json, goal2.md and the plots")
    for entity in ENTITIES:
        parser.add_argument(
            f"--{entity}_side_field", default=None, help=f"{entity} side field to group by (default: the first)"
        )
    args = parser.parse_args(argv)
    side_fields = {entity: getattr(args, f"{entity}_side_field") for entity in ENTITIES}
    if not os.path.isfile(args.checkpoint):
        sys.exit(f"error: checkpoint not found: {args.checkpoint}")
    try:
        rows = analyse(args.checkpoint, args.output_dir, side_fields)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(markdown_table(rows), end="")
    print(f"written to {args.output_dir}/")


if __name__ == "__main__":
    main()
