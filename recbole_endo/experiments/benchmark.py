"""Speed benchmark: training seconds per epoch, full-sort evaluation seconds and peak memory of
several models on several datasets, in one run, with each model's ratios to a baseline (BPR).

    python -m recbole_endo.experiments.benchmark --datasets=ml-100k,endo-synth --synth_interactions=1111111,11111111 \\
        --output_dir=results/speed

A model is an entry as ``--compare`` takes them: ``EndoDecouple`` runs at its defaults (the
benchmark sets ``tuned: False``), ``EndoDecouple[tuned=true]`` with its tuned file for the
dataset, ``EndoDecouple[ssl_batch_size=128]`` with that option.

Each (dataset, model) runs in a fresh Python process, one at a time, so its peak memory is its
own and no run inherits another's caches. The process builds the dataset, splits and model as a
normal run does (``quick_start.build``: the same config layering, seed and fast paths), then
times ``--epochs_measured`` training epochs after one warm-up epoch (``Trainer._train_epoch``,
as the quick start times epochs; the table gives their median) and one full-sort evaluation of
the test split (``Trainer.evaluate``, the item and user towers computed inside it). Peak memory
is the process's peak resident set (``ru_maxrss``: dataset, model, training and evaluation
together, before any profiling), plus the peak CUDA memory allocated on a GPU. ``endo-synth`` is generated before any timed
process starts, so no process counts the generator. Ratios divide each model's number by the
baseline's on the same dataset (blank without a baseline row).

Output in ``--output_dir``: ``speed.csv`` (one row per dataset and model, every measurement, CPU
seconds beside wall seconds: on a loaded machine they say what the work cost) and
``speed.md`` (the table and the settings), each rewritten, through a temporary file renamed into
place, after every model, so an interrupted run keeps what it measured; ``logs/`` holds each
process's output. With ``--profile_top`` N (default 10; 0: off) each process profiles the first
``--profile_batches`` batches (default 100) of one more training epoch after the timed ones
(``torch.profiler``, CPU), and the table lists, per model, the N operators with the most self
CPU time, with their share of the profiled self CPU time and their number of calls: where the
epoch's time goes. Any other ``--key=value`` is a RecBole config option for every run (e.g.
``--train_batch_size=4096``); any ``--synth_*`` goes to ``endo-synth`` only, which is generated
into ``dataset/benchmark/endo-synth/`` (not the ``dataset/endo-synth/`` of other runs) unless
``--data_path`` says otherwise. ``--synth_interactions`` may list sizes (``1111111,11111111``):
endo-synth is then measured once per size, each generated into ``dataset/benchmark/<size>/``,
with as many users as keep endo-synth's default 50 observed interactions per user (unless
``--synth_users`` is given) over its 1,000 items.
"""

import argparse
import csv
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from recbole_endo.config import options_from_args
from recbole_endo.experiments.compare import parse_entry, split_entries
from recbole_endo.files import open_replacing

# At their defaults, and the two the speed issue sets targets for at their tuned settings too.
DEFAULT_MODELS = (
    "BPR", "TwoTowerConcat", "TwoTowerSplit", "EndoDecouple", "TwoTowerSplit[tuned=true]", "EndoDecouple[tuned=true]",
)
SYNTH_DATASET = "endo-synth"
# endo-synth is generated into its own folder, so that a benchmark at 1M interactions does not
# regenerate the dataset/endo-synth/ that other runs (at the default options) use, and back.
SYNTH_DATA_PATH = os.path.join("dataset", "benchmark")
COLUMNS = [
    "dataset", "model", "status", "train_interactions", "users", "items", "batches_per_epoch",
    "warmup_epoch_s", "train_s_per_epoch", "train_s_min", "train_s_max", "eval_s", "train_cpu_s_per_epoch",
    "eval_cpu_s", "peak_rss_mb",
    "peak_cuda_mb", "build_s", "train_ratio", "eval_ratio", "memory_ratio", "threads", "device", "error",
]
RATIOS = {"train_ratio": "train_s_per_epoch", "eval_ratio": "eval_s", "memory_ratio": "peak_rss_mb"}


def default_threads():
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cores():
    """How many other processes are running now: Linux's count of runnable tasks
    (``/proc/loadavg``) less this one; elsewhere the 1-minute load average, which still counts a
    job that has just ended."""
    try:
        with open("/proc/loadavg") as loadavg:
            return int(loadavg.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def idle_cores():
    """The CPU cores this process may use less those busy with other work (:func:`busy_cores`),
    at least one: torch's threads beyond them wait on cores that other processes hold, and its
    OpenMP threads spin while they wait. On two cores beside one busy process an EndoDecouple
    epoch took 45-71 s with two threads and 2.1 s with one."""
    cores = default_threads()
    return max(1, min(cores, round(cores - busy_cores())))


def use_threads(parser, threads):
    """Sets torch's CPU threads from a command's ``--threads``: that count, else
    :func:`idle_cores`; a count below 1 is the command's usage error."""
    import torch

    if threads is not None and threads < 1:
        parser.error(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads or idle_cores())


def peak_rss_mb():
    """This process's peak resident memory in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def top_costs(profiler, count):
    """The ``count`` operators of a finished ``torch.profiler`` run with the most self CPU time:
    ``[{"op", "self_cpu_ms", "share", "calls"}]``, ``share`` of the run's total self CPU time."""
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) or 1
    return [
        {"op": event.key, "self_cpu_ms": event.self_cpu_time_total / 1000,
         "share": event.self_cpu_time_total / total, "calls": event.count}
        for event in events[:count]
    ]


def measure(
    model, dataset, config_file_list, config_dict, epochs_measured, threads, profile_top=0, profile_batches=None
):
    """In this process: build ``model`` on ``dataset``, time one warm-up and ``epochs_measured``
    training epochs and one full-sort evaluation of the test split, and with ``profile_top``
    profile the first ``profile_batches`` batches (all: None) of one more training epoch; return
    the measurements."""
    import torch

    torch.set_num_threads(threads)
    from recbole_endo.config import Config
    from recbole_endo.quick_start import build

    start = time.perf_counter()
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    _, _, trainer, (train_data, _, test_data) = build(config)
    build_s = time.perf_counter() - start
    cuda = config["device"].type == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)

    def timed(call):
        """``(wall seconds, CPU seconds of all this process's threads)`` of ``call()``."""
        synchronize()
        begin, begin_cpu = time.perf_counter(), time.process_time()
        call()
        synchronize()
        return time.perf_counter() - begin, time.process_time() - begin_cpu

    epochs = [
        timed(lambda epoch=epoch: trainer._train_epoch(train_data, epoch)) for epoch in range(1 + epochs_measured)
    ]
    eval_s, eval_cpu_s = timed(lambda: trainer.evaluate(test_data, load_best_model=False))
    measured = [wall for wall, _ in epochs[1:]]
    peak_rss = peak_rss_mb()  # before profiling: the profiler's event records are not the model's memory
    profile = None
    if profile_top:
        # After the timed epochs: the profiler's own overhead must not reach the timings. A
        # profiler step ends with each batch's loss; the profiler records the first
        # profile_batches of them (loading and loss of each, the backward and optimiser step of
        # all but the last), so a 10M-interaction epoch's millions of events need not be held.
        batches = min(profile_batches or len(train_data), len(train_data))
        schedule = torch.profiler.schedule(wait=0, warmup=0, active=batches, repeat=1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule) as profiler:

            def stepping_loss(interaction):
                loss = trainer.model.calculate_loss(interaction)
                profiler.step()
                return loss

            trainer._train_epoch(train_data, 1 + epochs_measured, loss_func=stepping_loss)
        profile = {"batches": batches, "costs": top_costs(profiler, profile_top)}
    train_dataset = train_data._dataset
    return {
        "train_interactions": len(train_dataset),
        "users": train_dataset.user_num - 1,  # RecBole's id 0 is padding
        "items": train_dataset.item_num - 1,
        "batches_per_epoch": len(train_data),
        "warmup_epoch_s": epochs[0][0],
        # The median: one epoch slowed by the machine's other work does not move it.
        "train_s_per_epoch": statistics.median(measured),
        "train_s_min": min(measured),
        "train_s_max": max(measured),
        "eval_s": eval_s,
        # CPU seconds: what the work cost, less sensitive than wall seconds to other processes' load.
        "train_cpu_s_per_epoch": sum(cpu for _, cpu in epochs[1:]) / epochs_measured,
        "eval_cpu_s": eval_cpu_s,
        "peak_rss_mb": peak_rss,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "build_s": build_s,
        "threads": torch.get_num_threads(),
        "device": str(config["device"]),
        "profile": profile,
    }


def run_worker(spec_file):
    """The child process: read the spec, measure, write the result JSON beside the spec."""
    from recbole_endo.compat.run_scope import plugin_run

    with open(spec_file) as file:
        spec = json.load(file)
    with plugin_run():  # what a run of the plugin changes in RecBole, its speed included
        result = measure(
            spec["model"], spec["dataset"], spec["config_file_list"], spec["config_dict"],
            spec["epochs_measured"], spec["threads"], spec["profile_top"], spec["profile_batches"],
        )
    with open_replacing(spec["result_file"]) as file:
        json.dump(result, file)


def dataset_cases(datasets, config_dict, synth_interactions=()):
    """``(label, dataset, options)`` per measured dataset. The ``synth_*`` options go to endo-synth
    only, which is generated under ``SYNTH_DATA_PATH`` unless ``data_path`` is given, and measured
    once per size in ``synth_interactions`` (observed interactions, train + valid): labelled with
    its size, generated into a folder of its own, its users scaled to keep endo-synth's default
    interactions per user unless ``synth_users`` is given."""
    from recbole_endo.data.synth import DEFAULT_OPTIONS

    cases = []
    for dataset in datasets:
        if dataset != SYNTH_DATASET:
            cases.append((dataset, dataset, {k: v for k, v in config_dict.items() if not k.startswith("synth_")}))
            continue
        options = {"data_path": SYNTH_DATA_PATH, **config_dict}
        if not synth_interactions:
            cases.append((dataset, dataset, options))
        per_user = DEFAULT_OPTIONS["interactions"] / DEFAULT_OPTIONS["users"]
        for size in synth_interactions:
            sized = {
                **options, "synth_interactions": size, "data_path": os.path.join(options["data_path"], str(size)),
                "synth_users": options.get("synth_users", math.ceil(size / per_user)),
            }
            cases.append((f"{dataset} {size:,}", dataset, sized))
    return cases


def prepare(dataset, model, config_file_list, config_dict):
    """Write a dataset that a run writes before loading it (endo-synth, when it is missing or
    stale) here, before any timed process."""
    from recbole_endo.data.preparers import DATASET_PREPARERS, prepare_dataset

    if dataset not in DATASET_PREPARERS:
        return
    from recbole_endo.config import Config

    prepare_dataset(Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict))


def run_one(
    model, dataset, config_file_list, config_dict, epochs_measured, threads, log_file, timeout=None, profile_top=0,
    profile_batches=None,
):
    """Measure ``model`` (an entry, ``Model`` or ``Model[key=value;...]`` as ``--compare`` takes
    them) on ``dataset`` in a fresh Python process; a row for the table."""
    row = {"dataset": dataset, "model": model}
    name, options = parse_entry(model)
    with tempfile.TemporaryDirectory(prefix="recbole-endo-benchmark-") as directory:
        spec = {
            "model": name, "dataset": dataset, "config_file_list": config_file_list,
            "config_dict": {**config_dict, **options},
            "epochs_measured": epochs_measured, "threads": threads, "profile_top": profile_top,
            "profile_batches": profile_batches, "result_file": os.path.join(directory, "result.json"),
        }
        spec_file = os.path.join(directory, "spec.json")
        with open(spec_file, "w") as file:
            json.dump(spec, file)
        command = [sys.executable, "-m", "recbole_endo.experiments.benchmark", f"--worker={spec_file}"]
        with open(log_file, "w") as log:
            try:
                process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
                failure = f"exit status {process.returncode}" if process.returncode else None
            except subprocess.TimeoutExpired:
                failure = f"timed out after {timeout} s"
        if failure is None and os.path.isfile(spec["result_file"]):
            with open(spec["result_file"]) as file:
                row.update(json.load(file), status="ok")
            return row
    with open(log_file) as log:
        lines = [line.strip() for line in log if line.strip()]
    row.update(status="failed", error=f"{failure or 'no result'}: {lines[-1] if lines else ''}"[:300])
    return row


def add_ratios(rows, baseline):
    """Each row's ratios to the ``baseline`` model's row on the same dataset (None without one)."""
    base = {row["dataset"]: row for row in rows if row["model"] == baseline and row.get("status") == "ok"}
    for row in rows:
        reference = base.get(row["dataset"])
        for ratio, column in RATIOS.items():
            ok = reference is not None and row.get("status") == "ok" and reference[column]
            row[ratio] = row[column] / reference[column] if ok else None
    return rows


def _cell(value, digits=2):
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows, baseline, settings):
    """The table: per dataset and model, seconds, memory and ratios to ``baseline``."""
    header = [
        "dataset", "model", "train interactions", "train s/epoch", f"× {baseline}", "eval s", f"× {baseline}",
        "peak RSS MiB", f"× {baseline}",
    ]
    lines = [settings, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| {row['dataset']} | `{row['model']}` | failed: {row.get('error', '')} |" + " |" * 6)
            continue
        cells = [
            row["dataset"], f"`{row['model']}`", f"{row['train_interactions']:,}",
            _cell(row["train_s_per_epoch"]), _cell(row["train_ratio"]), _cell(row["eval_s"]), _cell(row["eval_ratio"]),
            _cell(row["peak_rss_mb"], 0), _cell(row["memory_ratio"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    profiled = [row for row in rows if row.get("profile")]
    if profiled:
        lines += [
            "", "Top costs of the profiled training batches (self CPU time, share of the profiled time, calls):", "",
        ]
        for row in profiled:
            profile = row["profile"]
            costs = "; ".join(f"`{cost['op']}` {cost['share']:.0%} ({cost['calls']:,})" for cost in profile["costs"])
            lines.append(f"- {row['dataset']} `{row['model']}`, {profile['batches']:,} batches: {costs}")
    return "\n".join(lines) + "\n"


def write_tables(rows, output_dir, baseline, settings):
    """``speed.csv`` and ``speed.md`` in ``output_dir``, each written to a temporary file renamed
    into place."""
    with open_replacing(os.path.join(output_dir, "speed.csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({column: row.get(column) for column in COLUMNS} for row in rows)
    with open_replacing(os.path.join(output_dir, "speed.md")) as file:
        file.write(markdown(rows, baseline, settings))


def benchmark(
    datasets, output_dir, models=DEFAULT_MODELS, epochs_measured=3, threads=None, baseline="BPR",
    config_file_list=None, config_dict=None, timeout=None, profile_top=0, profile_batches=None,
    synth_interactions=(), log=print,
):
    """Measure every model on every dataset, each in a fresh process, and write the tables.

    Returns:
        list of dict: one row per (dataset, model), in order, with the ratios to ``baseline``.
    """
    if epochs_measured < 1:
        raise ValueError(f"epochs_measured must be at least 1, got {epochs_measured}")
    threads = threads or default_threads()
    # Each row at the model's defaults unless its entry asks for the tuned file ([tuned=true]).
    config_dict = {"tuned": False, **(config_dict or {})}
    os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
    settings = (
        f"Training: median of {epochs_measured} measured epoch(s) after one warm-up; one full-sort evaluation of "
        f"the test split; {threads} torch thread(s); {platform.machine()} {platform.system()}, {default_threads()} CPU core(s) "
        f"available; options {json.dumps(config_dict, sort_keys=True)}."
    )
    rows = []
    for label, dataset, options in dataset_cases(datasets, config_dict, synth_interactions):
        prepare(dataset, parse_entry(models[0])[0], config_file_list, options)
        for model in models:
            start = time.perf_counter()
            log_name = re.sub(r"[^\w.=-]+", "-", f"{label}-{model}").replace(",", "")
            log_file = os.path.join(output_dir, "logs", f"{log_name}.log")
            row = run_one(
                model, dataset, config_file_list, options, epochs_measured, threads, log_file, timeout,
                profile_top, profile_batches,
            )
            row["dataset"] = label
            rows.append(row)
            add_ratios(rows, baseline)
            write_tables(rows, output_dir, baseline, settings)
            if row["status"] == "ok":
                log(
                    f"{label} {model}: {row['train_s_per_epoch']:.2f} s/epoch, eval {row['eval_s']:.2f} s, "
                    f"peak RSS {row['peak_rss_mb']:.0f} MiB ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
            else:
                log(f"{label} {model}: FAILED ({row['error']}); see {log_file}", flush=True)
    add_ratios(rows, baseline)
    write_tables(rows, output_dir, baseline, settings)
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--datasets", default="ml-100k,endo-synth", help="comma-separated datasets")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS),
        help="comma-separated models, each at its defaults, or Model[key=value;...] (tuned=true: its tuned file)",
    )
    parser.add_argument("--baseline", default="BPR", help="the model the ratios divide by")
    parser.add_argument("--epochs_measured", type=int, default=3, help="epochs timed after one warm-up epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every available core)")
    parser.add_argument("--output_dir", default="results/speed", help="where speed.csv and speed.md go")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files for every run")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to each model's process")
    parser.add_argument(
        "--profile_top", type=int, default=10,
        help="operators listed per model from one profiled training epoch (0: no profiling)",
    )
    parser.add_argument(
        "--profile_batches", type=int, default=100, help="training batches profiled (0: the whole epoch)",
    )
    parser.add_argument(
        "--synth_interactions", default=None,
        help="comma-separated sizes of endo-synth, observed interactions, train + validation, each measured "
        "(default: its YAML's; 90%% train)",
    )
    args, config_args = parser.parse_known_args(argv)
    # RecBole's Config reads --key=value from sys.argv: the options go in config_dict instead.
    sys.argv = sys.argv[:1]
    if args.worker:
        run_worker(args.worker)
        return 0
    try:
        config_dict = options_from_args(config_args)
    except ValueError as error:
        parser.error(str(error))
    try:
        synth_interactions = [int(size) for size in (args.synth_interactions or "").split(",") if size.strip()]
    except ValueError:
        parser.error(f"--synth_interactions must be comma-separated integers, got {args.synth_interactions!r}")
    rows = benchmark(
        datasets=[name.strip() for name in args.datasets.split(",") if name.strip()],
        output_dir=args.output_dir,
        models=split_entries(args.models),
        epochs_measured=args.epochs_measured,
        threads=args.threads,
        baseline=args.baseline,
        config_file_list=args.config_files.split() if args.config_files else None,
        config_dict=config_dict,
        timeout=args.timeout,
        profile_top=args.profile_top,
        profile_batches=args.profile_batches or None,
        synth_interactions=synth_interactions,
    )
    with open(os.path.join(args.output_dir, "speed.md")) as file:
        print(file.read())
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
