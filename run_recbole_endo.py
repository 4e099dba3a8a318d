"""Train and test recbole_endo or RecBole models, as RecBole's run_recbole.py does.

    python run_recbole_endo.py --model=TwoTowerSplit --dataset=ml-100k
    python run_recbole_endo.py --config_files=my.yaml --learning_rate=0.002
    python run_recbole_endo.py --model=TwoTowerSplit --dataset=ml-100k --resume=saved/TwoTowerSplit-....pth
    python run_recbole_endo.py --compare=EndoDecouple,TwoTowerSplit,BPR --dataset=ml-100k --seeds=2020,2021,2022 --reference=EndoDecouple
    python run_recbole_endo.py --model=TwoTowerSplit --dataset=ml-100k --nproc=2

A run uses the CPU cores that other work leaves idle (``--threads`` to choose), shows RecBole's
epoch lines and after each validation one line with the time it can still take, writes RecBole's
configuration, dataset and model dumps and the loss components to its log file only, and ends
with a summary: the test metrics, the checkpoint (``saved/``), the log (``log/``, TensorBoard in
``log_tensorboard/``, all under the working directory) and commands to go on with.

Any other ``--key=value`` is read by RecBole's Config. With --compare, each listed model (or
``Model[key=value;...]`` entry) runs once per seed and the summary goes to --output_dir, with
--reference=ENTRY also each entry's paired per-user difference to that entry. With
--nproc > 1 or --world_size, the run is distributed (DDP) as with RecBole's run_recbole.py.

Bad input (an option's type or range, a config file that is missing or not YAML) is refused
before any data loads, in one line, ``error: <message>``, with exit status 2; --debug (or
RecBole's ``state: DEBUG``) shows the traceback. A failed run leaves no log, TensorBoard folder
or checkpoint. Ctrl-C ends with one line giving the --resume command that continues the run from
its last checkpoint (exit status 130).
"""

import argparse
import os
import shlex
import sys
import traceback

from recbole_endo.distributed import run_distributed
from recbole_endo.experiments.benchmark import use_threads
from recbole_endo.config import options_from_args
from recbole_endo.experiments.compare import compare, split_entries
from recbole_endo.quick_start import run_recbole_endo
from recbole_endo.retrieval import exported_kind


def resume_command(argv, checkpoint):
    """The command line ``argv`` (the script's own, as given) continuing from ``checkpoint``."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        skip = arg == "--resume"  # its value is the next argument
        if not skip:
            kept.append(arg)
    return shlex.join(["python", argv[0], *kept, f"--resume={checkpoint}"])


def interrupted_line(interrupt, args, argv):
    """What Ctrl-C ends with: how to continue, when there is a checkpoint to continue from."""
    if args.compare or args.nproc > 1 or args.world_size > 0:
        return "interrupted: --compare and distributed runs do not resume; run the command again to start over"
    checkpoint = getattr(interrupt, "checkpoint", None)
    if checkpoint is None:
        return "interrupted before a checkpoint was written: nothing to resume; run the command again to start over"
    return f"interrupted; continue from the last checkpoint with: {resume_command(argv, checkpoint)}"


def _metrics(result):
    return "  ".join(f"{name} {value:.4f}" for name, value in result.items())


def run_summary(result, args):
    """The lines a single run ends with: what ran, its test metrics, where its files are and
    the commands that go on from it."""
    lines = [
        f"{result['model']}: {result['epochs']} epoch{'s' if result['epochs'] != 1 else ''}, the best at epoch {result['best_epoch']} "
        f"({result['valid_metric']} {result['best_valid_score']:.4f} on validation), {result['train_s_per_epoch']:.1f} s "
        f"an epoch",
        f"test: {_metrics(result['test_result'])}",
    ]
    if result.get("tuned_file"):
        lines.append(f"options tuned on validation from: {result['tuned_file']} (--tuned=false: the defaults)")
    if result.get("checkpoint"):
        lines.append(f"checkpoint: {result['checkpoint']}")
    if result.get("log_file"):
        tensorboard = os.path.join("log_tensorboard", os.path.basename(result["log_file"]).split(".")[0])
        lines.append(f"log: {os.path.relpath(result['log_file'])}  (TensorBoard: {tensorboard})")
    dataset = f" --dataset={args.dataset}" if args.dataset else ""
    lines.append("next:")
    if result.get("checkpoint"):
        try:
            exported_kind(result["model"])
            lines.append(f"  top-k recommendations: python -m recbole_endo.retrieval export {result['checkpoint']} index/")
        except ValueError:  # its scores are no inner product: no index ranks as it does
            pass
    lines.append(
        f"  paired comparison over seeds: python run_recbole_endo.py --compare={result['model']},BPR{dataset} "
        f"--seeds=2020,2021,2022 --reference={result['model']}"
    )
    return "\n".join(lines)


def build_parser():
    # No abbreviations: RecBole's --seed=N would be taken for --seeds, and the run would ignore it.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", "-m", type=str, default=None, help="model name (default: from the config files)")
    parser.add_argument("--dataset", "-d", type=str, default=None, help="dataset name (default: from the config files)")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    parser.add_argument("--compare", type=str, default=None, help="comma-separated models to compare")
    parser.add_argument("--seeds", type=str, default="2020", help="comma-separated seeds for --compare")
    parser.add_argument(
        "--reference", type=str, default=None, help="--compare entry the others get paired differences to"
    )
    parser.add_argument("--output_dir", type=str, default="results", help="where --compare writes its tables")
    parser.add_argument("--jobs", type=int, default=1, help="--compare runs in this many parallel processes")
    parser.add_argument(
        "--resume", type=str, default=None, help="continue an interrupted run (same options) from its checkpoint"
    )
    parser.add_argument("--nproc", type=int, default=1, help="DDP processes on this machine")
    parser.add_argument("--world_size", type=int, default=-1, help="DDP processes on all machines (-1: nproc)")
    parser.add_argument("--ip", type=str, default="localhost", help="address of the machine of DDP rank 0")
    parser.add_argument("--port", type=str, default="5678", help="port of DDP rank 0")
    parser.add_argument("--group_offset", type=int, default=0, help="DDP rank of this machine's first process")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a refused option or a failed run"
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch's CPU threads (default: the cores that other running processes leave idle, at least one)",
    )
    return parser


def main(parser, args, argv):
    command = shlex.join(["python", *argv])
    use_threads(parser, args.threads)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    distributed = args.nproc > 1 or args.world_size > 0
    if args.compare and distributed:
        parser.error("--compare runs single-process jobs; it takes no --nproc or --world_size")
    if args.resume and (args.compare or distributed):
        parser.error("--resume continues one single-process run; it takes no --compare, --nproc or --world_size")
    if args.compare:
        seeds = [int(seed) for seed in args.seeds.split(",")]
        # RecBole's Config ranks sys.argv above config_dict, so an entry's own options (in
        # config_dict) would lose to the same option on the command line: it goes in config_dict
        # too, under the entry's.
        config_dict = options_from_args(sys.argv[1:])
        sys.argv = sys.argv[:1]
        try:
            compare(
                split_entries(args.compare), args.dataset, seeds, args.output_dir, config_file_list,
                config_dict=config_dict, jobs=args.jobs, reference=args.reference, command=command,
            )
        except ValueError as error:  # a --reference that is no entry, before any run
            parser.error(str(error))
        except RuntimeError as error:  # failed runs, named; the tables hold the others
            sys.exit(f"error: {error}")
        with open(f"{args.output_dir}/summary.md") as summary:
            print(summary.read())
    else:
        if distributed:
            result = run_distributed(
                model=args.model, dataset=args.dataset, config_file_list=config_file_list, nproc=args.nproc,
                world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
            )
        else:
            result = run_recbole_endo(
                model=args.model, dataset=args.dataset, config_file_list=config_file_list, resume_file=args.resume
            )
        print(run_summary(result, args))


if __name__ == "__main__":
    argv = list(sys.argv)
    parser = build_parser()
    args, config_args = parser.parse_known_args()
    # RecBole's Config reads --key=value from sys.argv: leave it only the options meant for it.
    sys.argv = sys.argv[:1] + config_args
    try:
        main(parser, args, argv)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            traceback.print_exc()
        print(interrupted_line(interrupt, args, argv), file=sys.stderr)
        sys.exit(130)
    except ValueError as error:  # the plugin's refusals name the option, file or field at fault
        if args.debug or getattr(error, "show_traceback", False):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
