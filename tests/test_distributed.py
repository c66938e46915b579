"""The loop under DDP (2 CPU ranks, gloo) matches one process on the same global batches."""

import os
import socket

import torch
import torch.multiprocessing as mp

from conftest import random_samples, tiny_llama
from tunesmith.train.config import TrainConfig

CFG = dict(method="full", batch_size=8, max_steps=3, lr=1e-3, warmup_steps=0, save_every=100)


def _fresh():
    from tunesmith.train.setup import prepare_model

    return prepare_model(tiny_llama(0), TrainConfig(**CFG))


def _worker(rank: int, world: int, port: int, out):
    import torch.distributed as dist

    from tunesmith.train.distributed import DistInfo
    from tunesmith.train.loop import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = train(_fresh(), random_samples(24, seed=9), TrainConfig(**CFG), None,
                       dist_info=DistInfo(rank=rank, world_size=world))
        out[rank] = result.losses
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process():
    from tunesmith.train.loop import train

    single = train(_fresh(), random_samples(24, seed=9), TrainConfig(**CFG), None).losses
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
        ranks = [list(out[0]), list(out[1])]
    assert ranks[0] == ranks[1]  # every rank logs the same global loss
    for a, b in zip(ranks[0], single):
        assert abs(a - b) < 1e-5, (ranks[0], single)
