"""Where a result comes from: the commit of the source that ran, the machine, and the tuned file
(with its search budget) behind each configuration, so that every table says how to reproduce it."""

import os
import platform
import subprocess

import recbole
import torch

# Folders of the checkout that runs write into: a change there leaves the computation as committed.
# A tuned file is the tuner's output; a run that layers one records its header (tuned_origin).
OUTPUT_FOLDERS = ("results", "docs", "recbole_endo/properties/tuned")


def git_commit():
    """The commit of the plugin's source checkout that runs (with ``-dirty`` for uncommitted
    changes to tracked files outside ``OUTPUT_FOLDERS``), or None when it is not a git checkout.
    Those folders hold what runs write (the tuner's tracked study database and tuned files,
    summaries, tables), not what they compute: counting them marked every study after a
    session's first one dirty."""
    source = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True, text=True, check=True
        ).stdout.strip()
        outputs = [f":(top,exclude){folder}" for folder in OUTPUT_FOLDERS]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *outputs],
            cwd=source, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def machine():
    """One line: operating system, processor, CPU count, torch, RecBole and Python versions."""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"recbole {recbole.__version__}, Python {platform.python_version()}"
    )


def tuned_origin(path):
    """How the tuned file at ``path`` was made (its first comment line, which names the study, its
    trials and the best validation score), or ``"defaults"`` when no tuned file was layered."""
    if not path:
        return "defaults (no tuned file)"
    with open(path) as file:
        first = file.readline().strip().lstrip("# ")
    return f"{os.path.relpath(path)}: {first}"
