"""DistributedDataParallel: two gloo processes on 127.0.0.1 train a two-layer FFF net; after every
step both ranks hold identical parameters, equal to one process trained on the whole batch."""

import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fffast import FFF

STEPS, BATCH, WORLD = 5, 24, 2


def make_net():
    return nn.Sequential(
        FFF(12, 10, 3, 2, activation="identity", init="normal(0.3)", seed=1),
        nn.ReLU(),
        FFF(10, 4, 2, 1, activation="gelu", init="normal(0.3)", seed=2),
    )


def batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 12, generator=g), torch.randint(0, 4, (BATCH,), generator=g))
            for _ in range(STEPS)]


def flat_parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train(model, data, rank=0, world=1):
    """SGD with momentum on each rank's slice of every batch; parameters after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    after = []
    for x, y in data:
        share = x.shape[0] // world
        xs, ys = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        opt.zero_grad()
        F.cross_entropy(model(xs), ys).backward()
        opt.step()
        after.append(flat_parameters(model))
    return after


def worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        model = DistributedDataParallel(make_net())
        after = train(model, batches(), rank, WORLD)
        gathered = []
        for flat in after:
            both = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(both, flat)
            gathered.append(torch.stack(both))
        torch.save(torch.stack(gathered), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(tmp_path):
    context = mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            raise AssertionError("the DDP workers did not finish within 300 s")
    gathered = torch.load(tmp_path / "rank0.pt")  # [steps, ranks, parameters]
    assert gathered.shape[:2] == (STEPS, WORLD)
    single = torch.stack(train(make_net(), batches()))
    for step in range(STEPS):
        assert torch.equal(gathered[step, 0], gathered[step, 1]), f"ranks differ after step {step}"
        torch.testing.assert_close(gathered[step, 0], single[step], atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"step {step}: DDP vs one process: {m}")
    assert not torch.equal(single[0], single[-1]), "the parameters must move"
