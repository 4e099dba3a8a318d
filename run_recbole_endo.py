"""Train and test recbole_endo or RecBole models, as RecBole's run_recbole.py does.

    python run_recbole_endo.py --model=TwoTowerSplit --dataset=ml-100k
    python run_recbole_endo.py --config_files=my.yaml --learning_rate=0.002
    python run_recbole_endo.py --compare=EndoDecouple,TwoTowerSplit,BPR --dataset=ml-100k --seeds=2020,2021,2022

Any other ``--key=value`` is read by RecBole's Config. With --compare, each listed model (or
``Model[key=value;...]`` entry) runs once per seed and the summary goes to --output_dir.
"""

import argparse
import sys

from recbole_endo.compare import compare, split_entries
from recbole_endo.quick_start import run_recbole_endo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default=None, help="model name (default: from the config files)")
    parser.add_argument("--dataset", "-d", type=str, default=None, help="dataset name (default: from the config files)")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    parser.add_argument("--compare", type=str, default=None, help="comma-separated models to compare")
    parser.add_argument("--seeds", type=str, default="2020", help="comma-separated seeds for --compare")
    parser.add_argument("--output_dir", type=str, default="results", help="where --compare writes its tables")
    parser.add_argument("--jobs", type=int, default=1, help="--compare runs in this many parallel processes")
    args, config_args = parser.parse_known_args()
    # RecBole's Config reads --key=value from sys.argv: leave it only the options meant for it.
    sys.argv = sys.argv[:1] + config_args

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    if args.compare:
        seeds = [int(seed) for seed in args.seeds.split(",")]
        compare(split_entries(args.compare), args.dataset, seeds, args.output_dir, config_file_list, jobs=args.jobs)
        with open(f"{args.output_dir}/summary.md") as summary:
            print(summary.read())
    else:
        result = run_recbole_endo(model=args.model, dataset=args.dataset, config_file_list=config_file_list)
        print(f"model: {result['model']}  epochs: {result['epochs']}  best epoch: {result['best_epoch']}  "
              f"train s/epoch: {result['train_s_per_epoch']:.2f}")
        print("best valid:", dict(result["best_valid_result"]))
        print("test:", dict(result["test_result"]))
