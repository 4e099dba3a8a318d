"""Writing files so that a crash never leaves a half-written one where a good one is expected, and
reading and writing RecBole atomic files."""

import os
import shutil
import tempfile
from contextlib import contextmanager

import pandas as pd
from recbole.utils import FeatureType


@contextmanager
def open_replacing(path, mode="w", **open_kwargs):
    """``open(path, mode)`` on a temporary file beside ``path``, renamed over ``path`` when the
    block ends without error and deleted when it fails: readers see the previous file or the
    finished one, never a truncated one.

    The temporary file is named after the process, so runs writing into one folder at the same
    time do not collide, and it is created as ``open`` creates files (the umask applies, unlike
    ``tempfile.mkstemp``'s private files).
    """
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    file = open(temporary, mode, **open_kwargs)
    try:
        with file:
            yield file
            # On disk before the rename: after a power cut the name must not point at lost data.
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


@contextmanager
def dataset_folder(target, keep_other_files=False):
    """A new folder beside ``target`` to write a dataset's files into. When the block ends without
    error it takes ``target``'s place by renames (with ``keep_other_files``, its files are moved
    into an existing ``target`` one by one, so files already there, such as other benchmark
    splits, stay); when the block fails it is deleted and ``target`` is left as it was.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=parent)
    try:
        os.chmod(work, 0o755)  # mkdtemp makes it private; a dataset folder should not be
        yield work
        if not os.path.exists(target):
            os.rename(work, target)
        elif keep_other_files:
            for name in sorted(os.listdir(work)):
                os.replace(os.path.join(work, name), os.path.join(target, name))
            os.rmdir(work)
        else:
            old = work + ".old"
            os.rename(target, old)
            os.rename(work, target)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_atomic_file(path, header, rows):
    """One RecBole atomic file: tab-separated, a ``name:type`` header."""
    with open(path, "w", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(map(str, row)) + "\n")


def read_atomic_file(path, config):
    """``(types, frame)`` of a RecBole atomic file: each ``name:type`` header's field type, and
    the rows as strings read as RecBole reads them (``field_separator``, ``encoding``; an empty
    cell is NaN, a missing value)."""
    separator, encoding = config["field_separator"], config["encoding"]
    with open(path, encoding=encoding) as file:
        header = file.readline().rstrip("\r\n").split(separator)
    types = {}
    for column in header:
        name, _, field_type = column.partition(":")
        if field_type not in {member.value for member in FeatureType}:
            raise ValueError(
                f"'{path}': header column '{column}' is not 'name:type' with a RecBole type "
                f"({', '.join(member.value for member in FeatureType)})"
            )
        types[name] = FeatureType(field_type)
    frame = pd.read_csv(path, delimiter=separator, dtype=str, encoding=encoding, engine="python")
    frame.columns = list(types)
    return types, frame
