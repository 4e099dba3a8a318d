"""Comparison runner: several models (plugin or built-in) × several seeds on one dataset and
protocol, summarised as mean ± std per metric in a Markdown table and a CSV.

A model entry is a name, optionally with options for that entry only, e.g.
``EndoDecouple[stage1_weight=0]`` or ``BPR[learning_rate=0.002]``; options are YAML values,
separated by ``;``. Every entry runs with the same seeds, hence the same splits.
"""

import csv
import multiprocessing
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import yaml

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
    return run


def _limit_threads(threads):
    import torch

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
    threads = max(1, os.cpu_count() // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_limit_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(run_entry, *task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            yield futures[future], future.exception() or future.result()


def compare(entries, dataset, seeds, output_dir, config_file_list=None, config_dict=None, jobs=1, log=print):
    """Run every entry with every seed; write ``runs.csv``, ``summary.csv`` and ``summary.md``
    under ``output_dir``, each to a temporary file renamed into place. Returns the summary.

    ``jobs > 1`` runs that many in parallel processes, each with its share of the CPU threads;
    every run is then timed under the same load, but slower than alone. A run that fails does not
    stop the others: the tables hold the runs that finished, then a RuntimeError names the failed ones.
    """
    tasks = [
        (entry, *parse_entry(entry), seed, dataset, config_file_list, config_dict) for entry in entries for seed in seeds
    ]
    os.makedirs(output_dir, exist_ok=True)
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
    # Entries may report different metrics (a protocol switched on for one entry): every column
    # any run has, in order of first appearance; a run without one leaves its cell empty.
    columns = list(dict.fromkeys(key for run in runs for key in run))
    metrics = [key for key in columns if key not in ("entry", "model", "seed", "wall_s", *RUN_COLUMNS)]
    with open_replacing(os.path.join(output_dir, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(runs)
    summary = summarise(runs, metrics)
    with open_replacing(os.path.join(output_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        summary_columns = metrics + RUN_COLUMNS
        writer.writerow(["model", "seeds"] + [f"{c} {stat}" for c in summary_columns for stat in ("mean", "std")])
        for entry, row in summary.items():
            writer.writerow([entry, row["seeds"]] + [v for c in summary_columns for v in row[c] or ("", "")])
    with open_replacing(os.path.join(output_dir, "summary.md")) as f:
        f.write(markdown_table(summary, metrics))
    if failed:
        raise RuntimeError(f"--compare: {len(failed)} of {len(tasks)} runs failed (the tables hold the others): {'; '.join(failed)}")
    return summary
