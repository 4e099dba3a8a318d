"""The README's two commands and every ``python -m`` entry point the documents name exist and
print their help. The pages of ``docs/results/`` are left out: their command lines record what
ran at the commit each table names."""

import glob
import os
import re
import runpy
import subprocess
import sys

import pytest

from recbole_endo.experiments import first_contact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")))


def readme_commands():
    with open(os.path.join(ROOT, "README.md")) as file:
        return first_contact.readme_commands(file.read())


def named_modules():
    modules = set()
    for path in DOCUMENTS:
        with open(path) as file:
            modules |= set(re.findall(r"python -m (recbole_endo[\w.]*)", file.read()))
    return sorted(modules)


def test_the_readme_opens_with_the_main_job_and_the_ci_test_command():
    main_job, tests = readme_commands()
    assert main_job.endswith("pip install --no-compile -e . && python run_recbole_endo.py --model=EndoDecouple --dataset=ml-100k")
    with open(os.path.join(ROOT, ".ci", "run")) as file:
        assert tests in file.read().splitlines()


def test_the_run_script_prints_its_help():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_endo.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--compare" in done.stdout


def test_the_documents_name_the_tools():
    assert {"recbole_endo.experiments.tune", "recbole_endo.data.coat", "recbole_endo.experiments.results_doc"} <= set(named_modules())


@pytest.mark.parametrize("module", named_modules())
def test_each_python_m_entry_point_the_documents_name_prints_its_help(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert stopped.value.code == 0
    assert "usage:" in capsys.readouterr().out
