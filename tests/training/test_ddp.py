"""DistributedDataParallel on CPU (gloo, world size 2): the sampler shards the data, rank 0 checkpoints."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from training.train import train_model

    try:
        result = train_model("unet", data, preset="cpu", epochs=1, batch_size=1, log_mlflow=False,
                             progress=False, out_dir=out, device="cpu")
        torch.save({"rank": rank, "has_metrics": bool(result.metrics)}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_shard_the_epoch_and_stay_in_sync(tiny_data, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path)), nprocs=2, join=True)
    ckpts = list(tmp_path.glob("unet-*/last.pt"))
    assert len(ckpts) == 1  # only rank 0 writes
    ck = torch.load(ckpts[0], weights_only=True)
    assert ck["step"] == 2  # 4 training slices, 2 ranks, batch 1: 2 steps each
    # only rank 0 validates: it returns the epoch's metrics, rank 1 none
    assert torch.load(tmp_path / "rank0.pt")["has_metrics"] and not torch.load(tmp_path / "rank1.pt")["has_metrics"]
