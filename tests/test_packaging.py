"""setup.cfg ships every package of the source tree and every properties file, so a plain
``pip install .`` has them all."""

import configparser
import fnmatch
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_cfg_lists_every_package_directory():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    listed = {name.strip() for name in config["options"]["packages"].split(",")}
    found = {
        os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for folder, _, files in os.walk(os.path.join(ROOT, "recbole_endo"))
        if "__init__.py" in files
    }
    assert listed == found


def test_setup_cfg_ships_every_properties_file():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    patterns = [pattern.strip() for pattern in config["options.package_data"]["recbole_endo.properties"].split(",")]
    folder = os.path.join(ROOT, "recbole_endo", "properties")
    files = [
        os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
        for parent, _, names in os.walk(folder)
        for name in names
        if not name.endswith((".py", ".pyc"))
    ]
    assert "overall.yaml" in files and "tuned/ml-100k/EndoDecouple.yaml" in files
    # fnmatch's * also matches "/": each pattern's depth is checked apart
    shipped = [
        file for file in files
        if any(fnmatch.fnmatch(file, pattern) and file.count("/") == pattern.count("/") for pattern in patterns)
    ]
    assert shipped == files
