"""Two CPU ranks (torchrun + gloo) on tiny data: ranks end with identical weights,
and only rank 0 writes the run folder."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {here!r})
    import torch
    from safetensors.torch import save_file
    from train_helpers import synthetic_prepared, tiny_config
    from medidiff.train.distributed import init_distributed
    from medidiff.train.loop import Trainer
    import torch.distributed as dist

    out = sys.argv[1]
    rank, world, _ = init_distributed(torch.device("cpu"))
    cfg = tiny_config("train.max_steps=3", "train.val_every=3", "train.checkpoint_every=100")
    tr = Trainer(cfg, synthetic_prepared(4), synthetic_prepared(2, seed=3), out + "/run", device="cpu", progress=False)
    res = tr.run()
    save_file({{k: v.contiguous() for k, v in tr.net.state_dict().items()}}, f"{{out}}/rank{{rank}}.safetensors")
    dist.destroy_process_group()
""")


def test_two_rank_ddp_identical_weights(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(SCRIPT.format(here=str(HERE)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", "--master_port=0", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # training moved the weights away from the seed's initialisation
    from medidiff.model.network import build_network
    from train_helpers import tiny_config

    torch.manual_seed(0)
    init = build_network(tiny_config().model).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert len(list((tmp_path / "run").glob("*.tmp*"))) == 0
