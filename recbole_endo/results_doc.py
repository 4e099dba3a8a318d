"""Writes ``docs/results.md`` from the comparison folders under ``results/``, so that no number in
it is copied by hand: ``python -m recbole_endo.results_doc`` (``--spec docs/results.yaml``).

The spec lists the tables in order; each names its ``folder`` (written by ``run_recbole_endo.py
--compare``), a ``title``, the ``text`` that says what the table measures and how to read it,
and the ``columns`` to show (of ``summary.csv``: ``valid ndcg@10``, ``exposed:ndcg@5``, ...).
A table shows each entry's mean ± std over seeds for those columns, then, when the comparison
had a reference, the paired difference to it for the NDCG columns among them (``paired.csv``),
under the provenance lines that open the folder's ``summary.md`` (command, commit, machine,
tuned files) and above its plot, ``docs/figures/<folder>.png``, of the first shown NDCG column
(the folder's ``summary.png`` plots every NDCG metric of the comparison).
"""

import argparse
import csv
import os
import sys

import yaml

from recbole_endo.compare import summary_figure
from recbole_endo.files import open_replacing
from recbole_endo.paired import format_difference


def read_summary(folder):
    """``(entries in order, {entry: {column: (mean, std)}})`` of ``summary.csv``."""
    with open(os.path.join(folder, "summary.csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    summary = {}
    for row in rows:
        columns = {key[: -len(" mean")] for key in row if key.endswith(" mean")}
        summary[row["model"]] = {
            column: None if row[f"{column} mean"] == "" else (float(row[f"{column} mean"]), float(row[f"{column} std"]))
            for column in columns
        }
        summary[row["model"]]["seeds"] = row["seeds"]
    return [row["model"] for row in rows], summary


def read_paired(folder):
    """``(reference, {(entry, metric): cell})`` of ``paired.csv``, or ``(None, {})`` without one."""
    path = os.path.join(folder, "paired.csv")
    if not os.path.isfile(path):
        return None, {}
    cells, reference = {}, None
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            reference = row["reference"]
            number = lambda key: None if row[key] == "" else float(row[key])  # noqa: E731
            cells[(row["model"], row["metric"])] = {
                "pairs": int(row["pairs"]), "mean": number("mean difference"), "ci_low": number("ci low"),
                "ci_high": number("ci high"), "p": number("wilcoxon p"),
            }
    return reference, cells


def provenance(folder):
    """The lines that open the folder's ``summary.md`` before its table."""
    with open(os.path.join(folder, "summary.md")) as file:
        lines = file.read().split("\n| ")[0].rstrip().splitlines()
    return [line for line in lines if not line.startswith("|")]


def tested_ndcg(columns):
    """The test NDCG columns among ``columns``: the ones with paired differences, and plotted."""
    return [column for column in columns if "ndcg" in column and not column.startswith("valid")]


def table_markdown(folder, columns):
    entries, summary = read_summary(folder)
    reference, paired = read_paired(folder)
    missing = [column for column in columns if column not in summary[entries[0]]]
    if missing:
        raise ValueError(f"{folder}/summary.csv has no column(s) {missing}; it has {sorted(summary[entries[0]])}")
    ndcg = tested_ndcg(columns)
    header = ["model", "seeds", *columns]
    if reference:
        header += [f"Δ {column} vs {reference}" for column in ndcg]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        cells = [entry, summary[entry]["seeds"]]
        cells += ["—" if summary[entry][c] is None else f"{summary[entry][c][0]:.4f} ± {summary[entry][c][1]:.4f}" for c in columns]
        if reference:
            cells += ["reference" if entry == reference else format_difference(paired[(entry, c)]) for c in ndcg]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_figure(folder, columns, path):
    """The table's plot, of its first test NDCG column (the table holds the others): each entry's
    mean ± std and its paired difference to the reference with its interval
    (:func:`recbole_endo.compare.summary_figure`)."""
    _, summary = read_summary(folder)
    reference, paired = read_paired(folder)
    table = {}
    for (entry, metric), cell in paired.items():
        table.setdefault(entry, {})[metric] = cell
    with open_replacing(path, "wb") as file:
        summary_figure(summary, tested_ndcg(columns)[:1], table or None, reference).savefig(file, format="png", dpi=90)


def write_results(spec_path, output_path):
    with open(spec_path) as file:
        spec = yaml.safe_load(file)
    root = os.path.dirname(os.path.abspath(spec_path))
    documents = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(os.path.join(documents, "figures"), exist_ok=True)
    parts = [spec["intro"].rstrip(), ""]
    for table in spec["tables"]:
        folder = os.path.join(os.path.dirname(root), table["folder"])
        markdown = table_markdown(folder, table["columns"])  # first: it names a missing column
        plot = os.path.join("figures", os.path.basename(os.path.normpath(folder)) + ".png")
        write_figure(folder, table["columns"], os.path.join(documents, plot))
        parts += [f"## {table['title']}", "", table["text"].rstrip(), ""]
        parts += [line + "  " for line in provenance(folder)] + [""]
        parts += [markdown, "", f"![{table['title']}]({plot})", ""]
    with open_replacing(output_path) as file:
        file.write("<!-- Written by python -m recbole_endo.results_doc from docs/results.yaml and results/: edit those. -->\n\n")
        file.write("\n".join(parts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="docs/results.yaml", help="the tables to write, in order")
    parser.add_argument("--output", default="docs/results.md", help="the document written")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    write_results(args.spec, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
