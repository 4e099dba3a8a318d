"""Writes the pages of ``docs/results/`` from the comparison folders under ``results/``, so that no
number in them is copied by hand: ``python -m recbole_endo.experiments.results_doc``
(``--spec docs/results.yaml``).

The spec's ``pages`` each have a ``name`` (the page is ``<name>.md``), a ``title``, an optional
``text`` and their ``tables`` in order. A table names its ``folder`` (written by
``run_recbole_endo.py --compare``), a ``title``, the ``text`` that says what the table measures
and how to read it, and the ``columns`` to show (of ``summary.csv``: ``valid ndcg@10``,
``exposed:ndcg@5``, ...). It shows each entry's mean ± std over seeds for those columns, then,
when the comparison had a reference, the paired difference to it for the NDCG columns among them
(``paired.csv``), under the provenance lines that open the folder's ``summary.md`` (command,
commit, machine, tuned files; on a page that already showed the folder, a line pointing there)
and above its plot, ``figures/<folder>.png`` (``<figure>.png`` when the table names a
``figure``, for two tables of one folder), of the first shown NDCG column (the folder's
``summary.png`` plots every NDCG metric of the comparison). A table that is not a comparison
(the speed benchmark's ``speed.md``, the analysis's ``goal2.md``) names the file to ``include``
instead, as it was written (its headings two levels down). A plot, or a page written here, that
the spec no longer names is removed.

The spec's ``records`` name the other folders of ``results/`` (studies, benchmarks, diagnostics
a document cites), each with a line saying what it holds. ``results/README.md`` is written as
their index: per page, each table's folder, then the records; a folder of ``results/`` that
neither a table nor a record names is an error, so that the folder holds only what the documents
use.

``index.md`` holds the spec's ``intro``, the ``headline`` table with its paired intervals and
the list of pages with their tables. The headline lists the ``models`` and, per column, the
``folder`` and ``metric``; in the README, between its two ``headline`` markers, the same table
shows each cell's mean ± std and the marks of its paired difference only (``*``, ``†``).
"""

import argparse
import csv
import os
import sys

import yaml

from recbole_endo.experiments.compare import summary_figure, summary_provenance
from recbole_endo.experiments.paired import excludes_zero, format_difference, read_paired
from recbole_endo.files import open_replacing


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


def tested_ndcg(columns):
    """The test NDCG columns among ``columns``: the ones with paired differences, and plotted."""
    return [column for column in columns if "ndcg" in column and not column.startswith("valid")]


def read_comparison(folder):
    """``(entries, summary, reference, paired)`` of a comparison folder: what a table, its plot
    and the headline read."""
    return (*read_summary(folder), *read_paired(folder))


def table_markdown(folder, comparison, columns):
    entries, summary, reference, paired = comparison
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


def write_figure(comparison, columns, path):
    """The table's plot, of its first test NDCG column (the table holds the others): each entry's
    mean ± std and its paired difference to the reference with its interval
    (:func:`recbole_endo.experiments.compare.summary_figure`)."""
    _, summary, reference, paired = comparison
    table = {}
    for (entry, metric), cell in paired.items():
        table.setdefault(entry, {})[metric] = cell
    with open_replacing(path, "wb") as file:
        summary_figure(summary, tested_ndcg(columns)[:1], table or None, reference).savefig(file, format="png", dpi=90)


HEADLINE_START = "<!-- headline: written by python -m recbole_endo.experiments.results_doc from docs/results.yaml -->"
HEADLINE_END = "<!-- headline end -->"


GENERATED = "<!-- Written by python -m recbole_endo.experiments.results_doc from docs/results.yaml and results/: edit those. -->"


def difference_marks(cell):
    """``*`` when the bootstrap interval of a paired difference excludes 0, ``†`` when its seed
    interval does (one of zero width never counts), as :func:`format_difference` marks them."""
    marks = "*" if cell["ci_low"] is not None and excludes_zero(cell["ci_low"], cell["ci_high"]) else ""
    low, high = cell.get("seed_ci_low"), cell.get("seed_ci_high")
    if low is not None and low != high and excludes_zero(low, high):
        marks += "†"
    return marks


def headline_markdown(headline, repository, intervals=True):
    """One row per model, one column per comparison: its mean ± std and its paired difference to
    that comparison's reference (with ``intervals``; else the difference's marks only); "—" where
    the comparison has no such entry."""
    header = ["model"] + [column["label"] for column in headline["columns"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    folders = {column["folder"] for column in headline["columns"]}
    comparisons = {folder: read_comparison(os.path.join(repository, folder))[1:] for folder in folders}
    tables = [comparisons[column["folder"]] for column in headline["columns"]]
    for model in headline["models"]:
        cells = [model]
        for column, (summary, reference, paired) in zip(headline["columns"], tables):
            if model not in summary or summary[model].get(column["metric"]) is None:
                cells.append("—")
                continue
            mean, std = summary[model][column["metric"]]
            cell = f"{mean:.3f} ± {std:.3f}"
            if reference and model != reference:
                difference = paired[(model, column["metric"])]
                if intervals:
                    cell += f" (Δ {format_difference(difference, p_value=False)})"
                elif marks := difference_marks(difference):
                    cell += f" {marks}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_headline(headline, repository, readme_path):
    with open(readme_path) as file:
        text = file.read()
    if HEADLINE_START not in text or HEADLINE_END not in text:
        raise ValueError(f"{readme_path} has no headline markers: put {HEADLINE_START!r} and {HEADLINE_END!r} "
                         "on lines of their own where the table goes")
    before, rest = text.split(HEADLINE_START, 1)
    after = rest.split(HEADLINE_END, 1)[1]
    with open_replacing(readme_path) as file:
        file.write(f"{before}{HEADLINE_START}\n{headline_markdown(headline, repository, intervals=False)}\n{HEADLINE_END}{after}")


def anchor(title):
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces as ``-``."""
    return "".join(character for character in title.lower() if character.isalnum() or character in " -_").replace(" ", "-")


def table_parts(table, repository, documents, shown):
    """The markdown lines of one table, and its plot's file name (None for an included table).
    ``shown``: the folders this page has already given the provenance of (updated)."""
    parts = [f"## {table['title']}", "", table["text"].rstrip(), ""]
    if "include" in table:
        with open(os.path.join(repository, table["include"])) as file:
            lines = file.read().rstrip().splitlines()
        included = "\n".join("##" + line if line.startswith("#") else line for line in lines)  # under the title
        return parts + [f"`{table['include']}`:", "", included, ""], None
    folder = os.path.join(repository, table["folder"])
    comparison = read_comparison(folder)
    markdown = table_markdown(folder, comparison, table["columns"])  # first: it names a missing column
    plot = table.get("figure", os.path.basename(os.path.normpath(folder))) + ".png"
    write_figure(comparison, table["columns"], os.path.join(documents, "figures", plot))
    if table["folder"] in shown:
        parts += [f"The runs of [{shown[table['folder']]}](#{anchor(shown[table['folder']])}) (`{table['folder']}`).", ""]
    else:
        shown[table["folder"]] = table["title"]
        parts += [line + "  " for line in summary_provenance(folder).splitlines()] + [""]
    return parts + [markdown, "", f"![{table['title']}](figures/{plot})", ""], plot


def index_markdown(spec, repository):
    parts = [GENERATED, "", spec["intro"].rstrip(), ""]
    if "headline" in spec:
        parts += ["## Headline", "", headline_markdown(spec["headline"], repository), ""]
    parts += ["## Pages", ""]
    for page in spec["pages"]:
        parts.append(f"- [{page['title']}]({page['name']}.md)")
        parts += [f"  - [{table['title']}]({page['name']}.md#{anchor(table['title'])})" for table in page["tables"]]
    return "\n".join(parts) + "\n"


def results_index(spec, repository):
    """``results/README.md``: each page's table folders, then the spec's ``records``. Raises
    ValueError naming a folder of ``results/`` that neither names."""
    parts = [GENERATED, "", "# results/", "",
             "The runs behind [docs/results/](../docs/results/index.md), a folder per table (its command, commit "
             "and machine open its `summary.md`), and the records the documents cite. Folders a table was "
             "merged from, and tables no page shows any more, left the tree: their commits keep them.", ""]
    named = set()
    for page in spec["pages"]:
        parts += [f"## [{page['title']}](../docs/results/{page['name']}.md)", ""]
        for table in page["tables"]:
            folder = table["folder"] if "folder" in table else os.path.dirname(table["include"])
            named.add(folder.split("/")[1])
            parts.append(f"- `{folder}`: {table['title']}")
        parts.append("")
    parts += ["## Records", ""]
    for folder, what in spec.get("records", {}).items():
        named.add(folder.split("/")[1])
        parts.append(f"- `{folder}`: {what}")
    results = os.path.join(repository, "results")
    unnamed = sorted(name for name in os.listdir(results) if os.path.isdir(os.path.join(results, name)) and name not in named)
    if unnamed:
        raise ValueError(f"results/ holds {', '.join(unnamed)}, which no table or record of the spec names: "
                         "name it in docs/results.yaml or remove it")
    return "\n".join(parts) + "\n"


def write_results(spec_path, output_dir, readme_path=None):
    """Write ``output_dir``'s ``index.md`` and one page per spec page, their plots in
    ``output_dir/figures``, and the README's headline when ``readme_path`` is given."""
    with open(spec_path) as file:
        spec = yaml.safe_load(file)
    repository = os.path.dirname(os.path.dirname(os.path.abspath(spec_path)))
    results = os.path.join(repository, "results")
    index = results_index(spec, repository) if os.path.isdir(results) else None  # first: it refuses an unnamed folder
    figures = os.path.join(output_dir, "figures")
    os.makedirs(figures, exist_ok=True)
    pages, plots = {"index.md": index_markdown(spec, repository)}, set()
    for page in spec["pages"]:
        parts, shown = [GENERATED, "", f"# {page['title']}", "", "[All results](index.md)", ""], {}
        if page.get("text"):
            parts += [page["text"].rstrip(), ""]
        for table in page["tables"]:
            lines, plot = table_parts(table, repository, output_dir, shown)
            parts += lines
            plots |= {plot} - {None}
        pages[f"{page['name']}.md"] = "\n".join(parts)
    for name, text in pages.items():
        with open_replacing(os.path.join(output_dir, name)) as file:
            file.write(text)
    for name in set(os.listdir(output_dir)) - set(pages):  # a page the spec dropped or renamed
        path = os.path.join(output_dir, name)
        if name.endswith(".md"):
            with open(path) as file:
                generated = file.readline().strip() == GENERATED
            if generated:
                os.remove(path)
    for name in set(os.listdir(figures)) - plots:  # a table's old plot, dropped or renamed
        if name.endswith(".png"):
            os.remove(os.path.join(figures, name))
    if index is not None:
        with open_replacing(os.path.join(results, "README.md")) as file:
            file.write(index)
    if readme_path is not None and "headline" in spec:
        write_headline(spec["headline"], repository, readme_path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="docs/results.yaml", help="the tables to write, in order")
    parser.add_argument("--output_dir", default="docs/results", help="the folder of the pages written")
    parser.add_argument("--readme", default="README.md", help="the README whose headline table is rewritten")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    write_results(args.spec, args.output_dir, args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
