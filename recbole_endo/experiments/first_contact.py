"""First contact: the README's two commands on a fresh clone, timed step by step.

    python -m recbole_endo.experiments.first_contact --output_dir=results/first-contact

Runs the commands of the README's first ``bash`` block (the main job, then the tests) exactly as
written, one after the other, each in its own fresh clone of the checkout's committed HEAD (a
temporary folder, removed after) and a new ``bash`` with no virtual environment active, so that
each makes its own ``.venv`` as a new user's would. The ``&&``-joined steps of a command run in that one shell
(``set -e``: a failing step stops the command, as ``&&`` does), each step's wall seconds
recorded; installing is then told apart from running. pip's download cache is the user's own,
so installing is timed with whatever that cache holds (the summary says so).

Output in ``--output_dir``: ``summary.md`` (commit, machine, each step's seconds, each command's
total against its limit: ``--limits``, default 180 and 600 seconds, the README's promise) and
``logs/command-<n>.log`` (each command's output).
"""

import argparse
import os
import shlex
import subprocess
import tempfile
import time

from recbole_endo.experiments.provenance import machine
from recbole_endo.files import open_replacing


def readme_commands(readme_text):
    """The commands of the README's first ``bash`` block: its lines that are neither blank nor
    comments, in order."""
    lines = readme_text.splitlines()
    try:
        start = lines.index("```bash") + 1
    except ValueError:
        raise ValueError("the README has no ```bash block to take the commands from") from None
    end = lines.index("```", start)
    return [line.strip() for line in lines[start:end] if line.strip() and not line.lstrip().startswith("#")]


def timed_script(command, timings_path):
    """A bash script that runs ``command``'s ``&&``-joined steps in one shell, stopping at the
    first that fails, and appends each step with its start and end time to ``timings_path``
    (tab-separated, bash's ``EPOCHREALTIME``)."""
    lines = ["set -e"]
    for step in command.split(" && "):
        lines += [
            "start=$EPOCHREALTIME",
            step,
            f"printf '%s\\t%s\\t%s\\n' {shlex.quote(step)} \"$start\" \"$EPOCHREALTIME\" >> {shlex.quote(timings_path)}",
        ]
    return "\n".join(lines) + "\n"


def clean_environment():
    """The environment without an active virtual environment (its ``bin`` left out of PATH)."""
    environment = dict(os.environ)
    venv = environment.pop("VIRTUAL_ENV", None)
    if venv:
        environment["PATH"] = os.pathsep.join(
            part for part in environment["PATH"].split(os.pathsep) if not part.startswith(venv)
        )
    environment.pop("PYTHONPATH", None)
    return environment


def run_command(command, clone, log_path):
    """Runs one README command in ``clone``; returns (exit status, [(step, seconds), ...])."""
    with tempfile.TemporaryDirectory() as scratch:
        timings_path = os.path.join(scratch, "timings.tsv")
        script_path = os.path.join(scratch, "command.sh")
        with open(script_path, "w") as file:
            file.write(timed_script(command, timings_path))
        with open(log_path, "w") as log:
            status = subprocess.run(
                ["bash", script_path], cwd=clone, env=clean_environment(), stdout=log, stderr=subprocess.STDOUT
            ).returncode
        steps = []
        if os.path.exists(timings_path):
            with open(timings_path) as file:
                for line in file:
                    step, start, end = line.rstrip("\n").rsplit("\t", 2)
                    steps.append((step, float(end) - float(start)))
    return status, steps


def first_contact(repository, output_dir, limits=(180, 600)):
    """Runs each README command of ``repository``'s HEAD in a fresh clone, writes the summary;
    returns ``[(command, status, steps, wall seconds), ...]``."""
    os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
    # The commit the clones take: the runner's own tree may hold uncommitted edits they never see.
    commit = subprocess.run(
        ["git", "-C", repository, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    runs = []
    readme = subprocess.run(
        ["git", "-C", repository, "show", "HEAD:README.md"], capture_output=True, text=True, check=True
    ).stdout
    for number, command in enumerate(readme_commands(readme), start=1):
        with tempfile.TemporaryDirectory() as parent:
            clone = os.path.join(parent, "clone")
            subprocess.run(["git", "clone", "--quiet", repository, clone], check=True)
            start = time.perf_counter()
            status, steps = run_command(command, clone, os.path.join(output_dir, "logs", f"command-{number}.log"))
            runs.append((command, status, steps, time.perf_counter() - start))
    write_summary(runs, output_dir, commit, limits)
    return runs


def write_summary(runs, output_dir, commit, limits):
    lines = [
        "# First contact: the README's commands on a fresh clone",
        "",
        f"Command: `python -m recbole_endo.experiments.first_contact --output_dir={output_dir}`",
        f"Commit: {commit} (the clones'); machine: {machine()}. Each command ran in its own fresh clone, "
        "making its own `.venv`, "
        "pip's download cache as the machine had it.",
        "",
    ]
    for number, (command, status, steps, wall) in enumerate(runs, start=1):
        limit = limits[number - 1] if number <= len(limits) else None
        verdict = "" if limit is None else f"; limit {limit} s: {'met' if wall <= limit else 'missed'}"
        lines += [
            f"## Command {number}: exit status {status}, {wall:.0f} s in all{verdict}",
            "",
            f"`{command}`",
            "",
            "| step | seconds |",
            "|---|---|",
            *(f"| `{step}` | {seconds:.1f} |" for step, seconds in steps),
            "",
        ]
    with open_replacing(os.path.join(output_dir, "summary.md")) as file:
        file.write("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--repository", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    parser.add_argument("--limits", default="180,600", help="seconds allowed per command, comma-separated")
    args = parser.parse_args(argv)
    runs = first_contact(args.repository, args.output_dir, tuple(int(limit) for limit in args.limits.split(",")))
    for number, (_, status, _, wall) in enumerate(runs, start=1):
        print(f"command {number}: exit status {status}, {wall:.0f} s")


if __name__ == "__main__":
    main()
