"""The first-contact benchmark on a throw-away repository: the README's commands are found, run
each in a fresh clone without the caller's virtual environment, and timed step by step."""

import subprocess

import pytest

from recbole_endo.experiments.first_contact import first_contact, readme_commands

README = """# a project

```bash
# 1. the main job
test -z "$VIRTUAL_ENV" && echo ran > made-by-command-1.txt && sleep 0.2

# 2. the tests
test ! -f made-by-command-1.txt && false && echo never
```

```bash
echo not a README command
```
"""


def test_readme_commands_are_the_first_bash_blocks_non_comment_lines():
    assert readme_commands(README) == [
        'test -z "$VIRTUAL_ENV" && echo ran > made-by-command-1.txt && sleep 0.2',
        "test ! -f made-by-command-1.txt && false && echo never",
    ]


def test_a_readme_without_a_bash_block_is_refused():
    with pytest.raises(ValueError, match="no ```bash block"):
        readme_commands("# a project\n")


def test_each_command_runs_in_one_fresh_clone_and_stops_at_its_failing_step(tmp_path, monkeypatch):
    repository = tmp_path / "repository"
    repository.mkdir()
    (repository / "README.md").write_text(README)
    git = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "--quiet", str(repository)], check=True)
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "readme"], check=True)
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "caller-venv"))

    runs = first_contact(str(repository), str(tmp_path / "out"), limits=(60, 60))

    (status_1, steps_1), (status_2, steps_2) = [(status, steps) for _, status, steps, _ in runs]
    assert status_1 == 0 and [step for step, _ in steps_1] == [
        'test -z "$VIRTUAL_ENV"', "echo ran > made-by-command-1.txt", "sleep 0.2",
    ]
    assert steps_1[2][1] >= 0.2
    # The second command's clone lacks the first's file (a clone each), then it stops at `false`.
    assert status_2 != 0 and [step for step, _ in steps_2] == ["test ! -f made-by-command-1.txt"]
    assert not (repository / "made-by-command-1.txt").exists()
    summary = (tmp_path / "out" / "summary.md").read_text()
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"Commit: {head} (the clones')" in summary
    assert "## Command 1: exit status 0" in summary and "limit 60 s: met" in summary
    assert (tmp_path / "out" / "logs" / "command-2.log").exists()
