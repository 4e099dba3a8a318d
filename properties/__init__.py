"""The plugin's YAML defaults, layered over RecBole's: overall.yaml, model/<Model>.yaml, dataset/<dataset>.yaml."""
