"""Train and test a recbole_endo or RecBole model, as RecBole's run_recbole.py does.

    python run_recbole_endo.py --model=TwoTowerSplit --dataset=ml-100k
    python run_recbole_endo.py --config_files=my.yaml --learning_rate=0.002

Any other ``--key=value`` is read by RecBole's Config.
"""

import argparse

from recbole_endo.quick_start import run_recbole_endo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default=None, help="model name (default: from the config files)")
    parser.add_argument("--dataset", "-d", type=str, default=None, help="dataset name (default: from the config files)")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    args, _ = parser.parse_known_args()

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    result = run_recbole_endo(model=args.model, dataset=args.dataset, config_file_list=config_file_list)
    print(f"model: {result['model']}  epochs: {result['epochs']}  fit seconds: {result['fit_seconds']:.1f}")
    print("best valid:", dict(result["best_valid_result"]))
    print("test:", dict(result["test_result"]))
