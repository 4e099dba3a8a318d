"""setup.cfg ships every package of the source tree, so a plain ``pip install .`` has them all."""

import configparser
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
    assert listed == found | {"recbole_endo.properties"}
