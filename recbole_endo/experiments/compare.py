"""Comparison runner: several models (plugin or built-in) × several seeds on one dataset and
protocol, summarised as mean ± std per metric in a Markdown table and a CSV; every run's
per-user test values kept, and with a reference entry each entry's paired difference to it
(``recbole_endo.experiments.paired``).

A model entry is a name, optionally with options for that entry only, e.g.
``EndoDecouple[stage1_weight=0]`` or ``BPR[learning_rate=0.002]``; options are YAML values,
separated by ``;``. Every entry runs with the same seeds, hence the same splits.
"""

import argparse
import csv
import multiprocessing
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
import yaml

from recbole_endo.experiments.paired import ndcg_metrics, paired_markdown, read_paired, read_per_user, write_paired, write_per_user
from recbole_endo.experiments.provenance import git_commit, machine, tuned_origin
from recbole_endo.files import open_replacing
from recbole_endo.quick_start import run_recbole_endo

ENTRY = re.compile(r"^\s*(?P<model>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\[(?P<options>.*)\])?\s*$")
RUN_COLUMNS = ["best_epoch", "epochs", "train_s_per_epoch", "valid_s_per_eval", "test_eval_s"]


def parse_entry(entry):
    """``'Model[key=value;key=value]'`` → ``('Model', {key: value})``."""
    match = ENTRY.match(entry)
    if not match:
        raise ValueError(f"--compare entry '{entry}' is not of the form Model or Model[key=value;...]")
    options = {}
    for option in filter(None, (match["options"] or "").split(";")):
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--compare entry '{entry}': option '{option}' is not key=value")
        options[key.strip()] = yaml.safe_load(value)
    return match["model"], options


def split_entries(text):
    """Split a comma-separated entry list, keeping commas inside [...]."""
    entries, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    return [entry.strip() for entry in entries + [current] if entry.strip()]


def summarise(runs, metrics):
    """Per entry: mean and sample std (n−1) of each metric and run column, over its seeds; a
    metric that no run of the entry reports (another protocol's) is ``None``."""
    summary = {}
    for entry in dict.fromkeys(run["entry"] for run in runs):
        rows = [run for run in runs if run["entry"] == entry]
        summary[entry] = {"seeds": len(rows)}
        for column in metrics + RUN_COLUMNS:
            values = [row[column] for row in rows if row.get(column) is not None]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[entry][column] = (statistics.mean(values), std) if values else None
    return summary


def markdown_table(summary, metrics):
    header = ["model", "seeds"] + metrics + ["best epoch", "train s/epoch", "valid s/eval", "test eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry, row in summary.items():
        cells = [entry, str(row["seeds"])]
        cells += ["—" if row[m] is None else f"{row[m][0]:.4f} ± {row[m][1]:.4f}" for m in metrics]
        cells += [f"{row['best_epoch'][0]:.1f}"]
        cells += [f"{row[c][0]:.2f}" for c in ("train_s_per_epoch", "valid_s_per_eval", "test_eval_s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_entry(entry, model, options, seed, dataset, config_file_list, config_dict):
    """One run of one entry with one seed, as a flat row: validation score, test metrics, timings."""
    start = time.perf_counter()
    result = run_recbole_endo(
        model=model, dataset=dataset, config_file_list=config_file_list,
        # Progress bars of runs finishing in any order would interleave: the log lines say enough.
        config_dict={"show_progress": False, **(config_dict or {}), **options, "seed": seed},
    )
    run = {"entry": entry, "model": model, "seed": seed, f"valid {result['valid_metric']}": result["best_valid_score"]}
    run.update(result["test_result"])
    run.update({column: result[column] for column in RUN_COLUMNS})
    run["wall_s"] = time.perf_counter() - start
    run["per_user"] = result["per_user"]
    run["tuned_file"] = result["tuned_file"]
    run["uniform_slice"] = result.get("uniform_slice")
    return run


def run_threads(jobs):
    """torch's threads in each run: its default alone, a share of the CPUs in ``jobs`` processes."""
    return torch.get_num_threads() if jobs <= 1 else max(1, os.cpu_count() // jobs)


def _limit_threads(threads):
    torch.set_num_threads(threads)


def _completed(tasks, jobs):
    """``(index, run or the exception it raised)`` of each task as it finishes, in ``jobs``
    processes when more than one."""
    if jobs <= 1:
        for index, task in enumerate(tasks):
            try:
                yield index, run_entry(*task)
            except Exception as error:  # the other entries still run; compare reports it at the end
                yield index, error
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_limit_threads, initargs=(run_threads(jobs),)) as pool:
        futures = {pool.submit(run_entry, *task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            yield futures[future], future.exception() or future.result()


def per_user_table(runs):
    """``{(entry, metric): {(seed, user): value}}`` of the runs' per-user test values."""
    table = {}
    for run in runs:
        for metric, (users, values) in run["per_user"].items():
            rows = table.setdefault((run["entry"], metric), {})
            rows.update({(run["seed"], str(user)): float(value) for user, value in zip(users, values)})
    return table


PLOT_LABEL_CHARACTERS = 48


def plot_labels(entries):
    """The entries as a plot's axis labels: options that every entry of a model shares are left
    out (they are in the table), and a label still longer than ``PLOT_LABEL_CHARACTERS`` keeps
    its start and end, joined by "…"."""
    options = {}
    for entry in entries:
        model, _, rest = entry.partition("[")
        options[entry] = (model, [option for option in rest.rstrip("]").split(";") if option])
    labels = []
    for entry in entries:
        model, own = options[entry]
        siblings = [parts for name, parts in options.values() if name == model]
        shared = set.intersection(*(set(parts) for parts in siblings)) if len(siblings) > 1 else set()
        kept = [option for option in own if option not in shared]
        label = f"{model}[{';'.join(kept)}]" if kept else model
        if len(label) > PLOT_LABEL_CHARACTERS:
            head = PLOT_LABEL_CHARACTERS // 3
            label = label[:head] + "…" + label[-(PLOT_LABEL_CHARACTERS - head - 1):]
        labels.append(label)
    return labels


def panel_labels(metrics, table=None, reference=None):
    """Per plotted metric, the x-axis labels of its row: the mean ± std over seeds (of the test
    split, or of the validation split for the ``valid <metric>`` column, each run's best
    validation score) and, with a paired ``table``, the paired difference to ``reference``; None
    where no entry has paired values of the metric (validation: no per-user values are kept), and
    that panel is left out."""
    labels = []
    for metric in metrics:
        if metric.startswith("valid "):
            left = f"validation {metric[len('valid '):]} at the best epoch: mean ± std over seeds"
        else:
            left = f"test {metric}: mean ± std over seeds"
        paired = bool(table) and any(metric in cells for cells in table.values())
        labels.append((left, f"paired Δ {metric} to {reference}, 95 % interval" if paired else None))
    return labels


def summary_figure(summary, metrics, table=None, reference=None):
    """``summary.png``: per NDCG metric (the validation score's among them), each entry's mean ±
    std over seeds and, with a ``reference``, each other entry's paired difference to it with its
    95 % interval (test metrics only), the reference marked (a Figure built without pyplot, as the
    goal-2 plots); :func:`panel_labels` names the axes."""
    from matplotlib.figure import Figure

    metrics = ndcg_metrics(metrics) or metrics[:1]
    entries = list(summary)
    labels = plot_labels(entries)
    columns = 2 if table else 1
    figure = Figure(figsize=(6 * columns, 0.45 * len(entries) * len(metrics) + 1.2 * len(metrics)))
    axes = figure.subplots(len(metrics), columns, squeeze=False)
    positions = range(len(entries))
    for row, (metric, (left_label, right_label)) in enumerate(zip(metrics, panel_labels(metrics, table, reference))):
        cells = [summary[entry][metric] or (float("nan"), 0.0) for entry in entries]
        colours = ["tab:red" if entry == reference else "tab:blue" for entry in entries]
        left = axes[row][0]
        for position, ((mean, std), colour) in enumerate(zip(cells, colours)):
            left.errorbar([mean], [position], xerr=[std], fmt="o", color=colour, capsize=3)
        left.set_yticks(list(positions), labels)
        left.invert_yaxis()
        left.set_xlabel(left_label)
        if table:
            right = axes[row][1]
            if right_label is None:
                right.set_axis_off()
                continue
            for position, entry in enumerate(entries):
                cell = table.get(entry, {}).get(metric)
                if entry == reference or not cell or cell["ci_low"] is None:
                    continue
                error = [[cell["mean"] - cell["ci_low"]], [cell["ci_high"] - cell["mean"]]]
                right.errorbar([cell["mean"]], [position], xerr=error, fmt="o", color="tab:blue", capsize=3)
            right.axvline(0.0, color="tab:red", linewidth=1)
            right.set_yticks(list(positions), labels)
            right.set_ylim(left.get_ylim())
            right.set_xlabel(right_label)
    figure.tight_layout()
    return figure


def provenance_markdown(command, commit, runs, jobs):
    """What a table needs to be reproduced: the command, the commit its runs started at, the
    machine and, per entry, the tuned file its runs layered (with the search budget it records)
    or the defaults."""
    origins = {run["entry"]: tuned_origin(run["tuned_file"]) for run in runs}
    lines = [
        f"Command: `{command}`" if command else "Command: not recorded (compare() called from Python).",
        f"Commit: {commit or 'unknown'}; machine: {machine()}; {jobs} run(s) at a time, "
        f"{run_threads(jobs)} torch thread(s) each.",
    ]
    for path, count in dict.fromkeys(tuple(run["uniform_slice"]) for run in runs if run.get("uniform_slice")):
        lines.append(
            f"Test: without the uniform slice {path} ({count} random ratings the converter's --uniform_slice "
            "moved out of the test; propensity naive_bayes estimates P(r) on them), for every entry: not "
            "comparable with a table on the whole test."
        )
    lines += [
        "Configuration of each entry (its options in brackets override it):",
        *(f"- {entry}: {origin}" for entry, origin in origins.items()),
    ]
    return "\n".join(lines) + "\n\n"


def compare(
    entries, dataset, seeds, output_dir, config_file_list=None, config_dict=None, jobs=1, reference=None, log=print,
    command=None,
):
    """Run every entry with every seed; write ``runs.csv``, ``summary.csv``, ``summary.md``, its plot
    ``summary.png`` and ``per_user.csv.gz`` (every run's per-user test values) under
    ``output_dir``, each to a temporary file renamed into place; ``summary.md`` opens with the
    ``command`` that ran, the commit, the machine and each entry's tuned file or defaults
    (:func:`provenance_markdown`); with ``reference`` (one of
    ``entries``), also each other entry's paired differences to it, in ``paired.csv``, below the
    summary and in the plot. Returns the summary.

    ``jobs > 1`` runs that many in parallel processes, each with its share of the CPU threads;
    every run is then timed under the same load, but slower than alone. A run that fails does not
    stop the others: the tables hold the runs that finished, then a RuntimeError names the failed ones.
    """
    if reference is not None and reference not in entries:
        raise ValueError(f"--reference '{reference}' is none of the --compare entries {entries}: name one of them")
    tasks = [
        (entry, *parse_entry(entry), seed, dataset, config_file_list, config_dict) for entry in entries for seed in seeds
    ]
    os.makedirs(output_dir, exist_ok=True)
    commit = git_commit()  # now: the source may be committed again while the runs go on
    runs, failed = [None] * len(tasks), []
    for done, (index, run) in enumerate(_completed(tasks, jobs), 1):
        if isinstance(run, Exception):
            entry, seed = tasks[index][0], tasks[index][3]
            failed.append(f"{entry} seed {seed}: {type(run).__name__}: {run}")
            log(f"[{done}/{len(tasks)}] {failed[-1]}", flush=True)
            continue
        runs[index] = run
        log(
            f"[{done}/{len(tasks)}] {run['entry']} seed {run['seed']}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in run.items() if k.endswith("@10"))
            + f" ({run['wall_s']:.0f} s)",
            flush=True,
        )
    runs = [run for run in runs if run is not None]
    if not runs:
        raise RuntimeError(f"--compare: every run failed: {'; '.join(failed)}")
    per_user = per_user_table(runs)
    provenance = provenance_markdown(command, commit, runs, jobs)
    provenance_only = ("per_user", "tuned_file", "uniform_slice")
    runs = [{key: value for key, value in run.items() if key not in provenance_only} for run in runs]
    summary = write_tables(output_dir, runs, per_user, provenance, reference)
    if failed:
        raise RuntimeError(f"--compare: {len(failed)} of {len(tasks)} runs failed (the tables hold the others): {'; '.join(failed)}")
    return summary


def write_tables(output_dir, runs, per_user, provenance, reference=None):
    """Write a comparison folder from its runs (flat rows: entry, model, seed, metrics, run
    columns) and their per-user values (:func:`per_user_table`): see :func:`compare`; returns the
    summary."""
    # Entries may report different metrics (a protocol switched on for one entry): every column
    # any run has, in order of first appearance; a run without one leaves its cell empty.
    columns = list(dict.fromkeys(key for run in runs for key in run))
    metrics = [key for key in columns if key not in ("entry", "model", "seed", "wall_s", *RUN_COLUMNS)]
    with open_replacing(os.path.join(output_dir, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(runs)
    write_per_user(os.path.join(output_dir, "per_user.csv.gz"), per_user)
    summary = summarise(runs, metrics)
    with open_replacing(os.path.join(output_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        summary_columns = metrics + RUN_COLUMNS
        writer.writerow(["model", "seeds"] + [f"{c} {stat}" for c in summary_columns for stat in ("mean", "std")])
        for entry, row in summary.items():
            writer.writerow([entry, row["seeds"]] + [v for c in summary_columns for v in row[c] or ("", "")])
    markdown, table = provenance + markdown_table(summary, metrics), None
    if reference is not None:
        table = write_paired(output_dir, per_user, reference, list(summary))
        markdown += "\n" + paired_markdown(table, reference)
    with open_replacing(os.path.join(output_dir, "summary.png"), "wb") as f:
        summary_figure(summary, metrics, table, reference).savefig(f, format="png", dpi=110)
    with open_replacing(os.path.join(output_dir, "summary.md")) as f:
        f.write(markdown)
    return summary


def _number(text):
    """A number of ``runs.csv`` as it was written: an int (a seed, an epoch, a count) or a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_comparison_runs(folder):
    """``(runs, per_user, provenance, reference)`` of a comparison folder, as :func:`write_tables`
    takes them: ``runs.csv`` (numbers parsed, empty cells left out), ``per_user.csv.gz``, the
    lines of ``summary.md`` above its table, and the reference of its ``paired.csv`` (None
    without one)."""
    missing = [name for name in ("runs.csv", "per_user.csv.gz", "summary.md") if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise ValueError(
            f"{folder} lacks {', '.join(missing)}: only a folder that run_recbole_endo.py --compare wrote with "
            "per-user values can be re-tabulated; rerun its command to make one"
        )
    with open(os.path.join(folder, "runs.csv"), newline="") as file:
        runs = [
            {key: value if key in ("entry", "model") else _number(value) for key, value in row.items() if value != ""}
            for row in csv.DictReader(file)
        ]
    reference, _ = read_paired(folder)
    return runs, read_per_user(os.path.join(folder, "per_user.csv.gz")), summary_provenance(folder) + "\n\n", reference


def summary_provenance(folder):
    """The lines above the table of a comparison folder's ``summary.md``: its command, commit,
    machine and each entry's configuration."""
    with open(os.path.join(folder, "summary.md")) as file:
        return ("\n" + file.read()).split("\n| model |", 1)[0].strip("\n")


def retabulate(folders, output_dir, reference=None, rerun=None, entries=None, seeds=None):
    """Rewrite the tables of comparison folders from their saved runs and per-user values, with
    today's statistics, without repeating a run. One folder: in place (``output_dir`` may be it),
    every entry kept. Several: merged into ``output_dir``, one table of the entries that have a
    run on every seed the folders hold between them (the others are left out, and the table's
    lines say so); no entry may have the same seed in two folders. ``rerun``: a folder of rows run
    again after their code changed, merged last; its entries' runs replace all their runs in
    ``folders`` (the table's lines name what was replaced). ``entries`` and ``seeds``, when given,
    keep only those entries' and seeds' runs of every folder, the rerun's too (a rerun folder
    holding more rows than a table has). ``reference`` defaults to the first folder's."""
    parts = [_keep(read_comparison_runs(folder), entries, seeds) for folder in folders]
    order = list(dict.fromkeys(run["entry"] for part in parts for run in part[0]))  # a rerun entry keeps its place
    replaced = []
    if rerun is not None:
        parts, replaced = _drop_rerun(folders, parts, _keep(read_comparison_runs(rerun), entries, seeds))
        folders = [*folders, rerun]
    found = {}
    for folder, (runs, *_) in zip(folders, parts):
        for run in runs:
            key = (run["entry"], run["seed"])
            if key in found:
                raise ValueError(f"{run['entry']} has seed {run['seed']} in both {found[key]} and {folder}: merged runs need different seeds")
            found[key] = folder
    found_seeds = {seed for _, seed in found}
    found_entries = sorted(
        dict.fromkeys(entry for entry, _ in found), key=lambda entry: order.index(entry) if entry in order else len(order)
    )
    # One folder keeps every entry, as compare() wrote it (a failed run leaves its entry fewer seeds).
    complete = [
        entry for entry in found_entries if len(folders) == 1 or all((entry, seed) in found for seed in found_seeds)
    ]
    if not complete:
        raise ValueError(f"no entry of {folders} has a run on every seed {sorted(found_seeds)}: nothing to merge")
    reference = reference or parts[0][3]
    if reference is not None and reference not in complete:
        raise ValueError(f"--reference '{reference}' is none of the entries {complete}: name one of them")
    # As compare() orders them: entry by entry, seed by seed.
    runs = sorted(
        (run for part in parts for run in part[0] if run["entry"] in complete),
        key=lambda run: (complete.index(run["entry"]), run["seed"]),
    )
    per_user = {}
    for part in parts:
        for (entry, metric), rows in part[1].items():
            if entry in complete:
                per_user.setdefault((entry, metric), {}).update(rows)
    provenance = parts[0][2]
    if len(parts) > 1:
        left_out = [entry for entry in found_entries if entry not in complete]
        kept = "".join(
            f" Only {what} {', '.join(map(str, chosen))} kept." for what, chosen in (("entries", entries), ("seeds", seeds)) if chosen
        )
        provenance = (
            "Merged by `python -m recbole_endo.experiments.compare` from the folders below; "
            f"entries without a run on every seed left out: {', '.join(left_out) or 'none'}.{kept}"
            + "".join(f" {entry}'s runs in `{old}` replaced by those in `{folders[-1]}`." for entry, old in replaced)
            + "\n\n"
            + "".join(f"From `{folder}`:\n\n{part[2]}" for folder, part in zip(folders, parts))
        )
    os.makedirs(output_dir, exist_ok=True)
    return write_tables(output_dir, runs, per_user, provenance, reference)


def _keep(part, entries, seeds):
    """A folder's ``(runs, per_user, provenance, reference)`` with only the runs of ``entries`` and
    ``seeds`` (each None: all)."""
    runs, per_user, provenance, reference = part

    def kept(entry, seed):
        return (entries is None or entry in entries) and (seeds is None or seed in seeds)

    return (
        [run for run in runs if kept(run["entry"], run["seed"])],
        {
            (entry, metric): {(seed, user): value for (seed, user), value in rows.items() if kept(entry, seed)}
            for (entry, metric), rows in per_user.items()
            if entries is None or entry in entries
        },
        provenance,
        reference,
    )


def _drop_rerun(folders, parts, rerun_part):
    """``parts`` without the runs of the entries the rerun folder's part holds, with that part
    appended, and the list of ``(entry, folder)`` whose runs were dropped."""
    again = {run["entry"] for run in rerun_part[0]}
    kept, replaced = [], []
    for folder, (runs, per_user, provenance, reference) in zip(folders, parts):
        replaced += [(entry, folder) for entry in dict.fromkeys(run["entry"] for run in runs) if entry in again]
        kept.append((
            [run for run in runs if run["entry"] not in again],
            {key: rows for key, rows in per_user.items() if key[0] not in again},
            provenance,
            reference,
        ))
    return [*kept, rerun_part], replaced


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m recbole_endo.experiments.compare",
        description="Rewrite comparison folders' tables (summary, paired statistics, plot) from their saved runs and "
        "per-user values, without repeating a run: one folder in place, or several merged into --output_dir "
        "(the entries with a run on every seed the folders hold).",
    )
    parser.add_argument("folders", nargs="+", help="folders written by run_recbole_endo.py --compare")
    parser.add_argument("--output_dir", help="where the merged tables go (one folder: default, in place)")
    parser.add_argument("--reference", help="entry the others get paired differences to (default: the first folder's)")
    parser.add_argument("--rerun", help="a folder of rows run again after their code changed: merged last, its entries' "
                        "runs replace theirs in the other folders")
    parser.add_argument("--entries", help="keep only these entries (comma-separated, as --compare lists them)")
    parser.add_argument("--seeds", help="keep only these seeds (comma-separated)")
    args = parser.parse_args(argv)
    if (len(args.folders) > 1 or args.rerun) and not args.output_dir:
        parser.error("merging several folders needs --output_dir")
    entries = split_entries(args.entries) if args.entries else None
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else None
    try:
        retabulate(args.folders, args.output_dir or args.folders[0], args.reference, args.rerun, entries, seeds)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
