"""Distributed runs (DDP): one process per rank on this machine, as RecBole's ``run_recbole.py``
starts them, each running :func:`recbole_endo.quick_start.run_recbole_endo`.

RecBole's DDP, unchanged: each process trains on its ``1/world_size`` share of every batch
(RecBole divides ``train_batch_size`` by ``world_size``), gradients are averaged across processes,
each evaluates its share of the users and the metrics are averaged, and rank 0 writes the
checkpoint. Without CUDA the processes join with ``gloo`` on the CPU (see
:meth:`recbole_endo.compat.config.FixedRecBoleConfig._init_device`); with CUDA, with RecBole's ``nccl``, one GPU each.
"""

import os

import torch
import torch.multiprocessing as mp

from recbole_endo.quick_start import run_recbole_endo


def run_distributed(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    r"""Train and test as :func:`run_recbole_endo` does, in ``nproc`` processes of one DDP group.

    Args:
        nproc (int): processes started on this machine.
        world_size (int): processes in the whole group, over all machines; -1: ``nproc``.
        ip (str), port (str or int): the address of the group's rank 0, where every process meets.
        group_offset (int): the rank of this machine's first process.

    The other arguments are :func:`run_recbole_endo`'s. Each process gets its share of this
    machine's CPU threads (as ``--compare --jobs`` does; more oversubscribe the cores). A failing
    process ends the others.

    Returns:
        dict: the result of this machine's first process (its metrics are the group's).
    """
    config_dict = {
        **(config_dict or {}),
        "world_size": nproc if world_size == -1 else world_size,
        "ip": ip,
        "port": port,
        "nproc": nproc,
        "offset": group_offset,
    }
    # A spawn-context queue, as RecBole's run(): the processes are started by spawning.
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _run_process,
        args=(model, dataset, config_file_list, config_dict, saved, queue),
        nprocs=nproc,
        join=True,
    )
    return queue.get()


def _run_process(local_rank, model, dataset, config_file_list, config_dict, saved, queue):
    torch.set_num_threads(max(1, os.cpu_count() // config_dict["nproc"]))
    config_dict = {**config_dict, "local_rank": local_rank}
    run_recbole_endo(model, dataset, config_file_list, config_dict, saved=saved, queue=queue)
