"""The CUDA paths, on a CUDA GPU: the models against the CPU in fp32 and under bf16 autocast, the
hand-written ISTA backward under autocast, flash attention for both MSSA variants, and train() itself
with NCCL DDP, torch.compile and fp16 with its GradScaler. Skipped where there is no GPU (CI);
`bench/gpu.sh` runs them (`pytest -m gpu`).

Comparisons use the relative error of a whole tensor, ||a - b|| / ||b||: a wrong kernel or a wrong
cast is off by order one, rounding by 2^-8 (bf16) or 2^-23 (fp32) per operation.
"""

from __future__ import annotations

import copy
import json
import math
import socket
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist

import cratelab.train as train_module
from cratelab.checkpoint import load_checkpoint, read_checkpoint
from cratelab.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from cratelab.models import build_model
from cratelab.models.base import CausalSelfAttention
from cratelab.models.ista import ista_encode
from cratelab.train import train

from .models.test_ista import plain_ista

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VARIANTS = {"crate-shared": dict(arch="crate", qkv="shared"), "crate-separate": dict(arch="crate", qkv="separate"),
            "gpt-relu": dict(arch="gpt")}
SHAPE = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=512)
# relative tolerances (loss, gradients): fp32 kernels differ in reduction order between CPU and GPU;
# bf16 rounds (2^-8 each) through two blocks and back (on a CPU, bf16 autocast against fp32 measured
# 1e-5 for the loss and 0.03-0.045 for the worst gradient)
FP32_TOL = (1e-5, 1e-4)
BF16_TOL = (1e-2, 0.1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture
def exact_fp32():
    """TF32 off while comparing fp32 results (train() turns it on for speed)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def loss_and_grads(model: torch.nn.Module, idx: torch.Tensor, amp_dtype: torch.dtype | None):
    """One forward and backward pass: the loss and every parameter's gradient."""
    device = next(model.parameters()).device
    idx = idx.to(device)
    with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
        _, loss = model(idx, idx)
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("amp_dtype, tol", [(None, FP32_TOL), (torch.bfloat16, BF16_TOL)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_and_backward_on_cuda_match_the_cpu(variant, amp_dtype, tol, exact_fp32):
    loss_tol, grad_tol = tol
    torch.manual_seed(0)
    cpu_model = build_model(ModelConfig(**VARIANTS[variant], **SHAPE))
    cuda_model = copy.deepcopy(cpu_model).cuda()
    idx = torch.randint(0, SHAPE["vocab_size"], (4, SHAPE["block_size"]))
    cpu_loss, cpu_grads = loss_and_grads(cpu_model, idx, None)  # the CPU reference is always fp32
    cuda_loss, cuda_grads = loss_and_grads(cuda_model, idx, amp_dtype)
    assert relative_error(cuda_loss, cpu_loss) < loss_tol
    errors = {name: relative_error(cuda_grads[name], grad) for name, grad in cpu_grads.items()}
    assert max(errors.values()) < grad_tol, errors
    assert all(g.dtype == torch.float32 for g in cuda_grads.values())  # parameters stay fp32 under autocast


def test_the_ista_function_under_bf16_autocast_is_as_accurate_as_plain_autograd(exact_fp32):
    """Both round in bf16, at different places: against the fp32 equations, the hand-written function
    must be about as close as autograd under autocast is (measured on a CPU: ratios 0.9-1.15)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 128, generator=g).cuda()
    W = (torch.randn(512, 128, generator=g) * 0.1).cuda()
    upstream = torch.randn(512, 512, generator=g).cuda()

    def code_and_grads(encode, amp: bool):
        x_, W_ = x.clone().requires_grad_(), W.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            code = encode(x_, W_, 0.1, 0.1, 3)
        (code.float() * upstream).sum().backward()
        return code, x_.grad, W_.grad

    exact = code_and_grads(plain_ista, amp=False)
    autograd_bf16 = code_and_grads(plain_ista, amp=True)
    function_bf16 = code_and_grads(ista_encode, amp=True)
    assert function_bf16[0].dtype == autograd_bf16[0].dtype == torch.bfloat16
    assert function_bf16[1].dtype == function_bf16[2].dtype == torch.float32  # gradients in the parameters' dtype
    assert 0.1 < (exact[0] == 0).float().mean() < 0.9  # the ReLUs cut: the backward's masks matter
    for ours, theirs, truth in zip(function_bf16, autograd_bf16, exact):
        assert relative_error(ours, truth) < 1.5 * relative_error(theirs, truth) + 1e-3


@pytest.mark.parametrize("head_dim", [32, 64])  # the paper's 1L-3L (d 128, 4 heads) and S/B (d 768, 12 heads)
@pytest.mark.parametrize("qkv", ["shared", "separate"])
def test_mssa_runs_on_the_flash_kernel_and_matches_the_math_kernel(qkv, head_dim):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = ModelConfig(arch="crate", qkv=qkv, n_layer=1, n_head=4, n_embd=4 * head_dim, block_size=256, vocab_size=64)
    torch.manual_seed(0)
    attn = CausalSelfAttention(cfg, qkv=qkv, qkv_bias=False).cuda()
    x = torch.randn(2, 256, cfg.n_embd, device="cuda", requires_grad=True)

    def run(backend: SDPBackend):
        with sdpa_kernel(backend), torch.autocast("cuda", dtype=torch.bfloat16):  # flash needs bf16/fp16
            y = attn(x)
            grad, = torch.autograd.grad(y.float().square().sum(), x)
        return y, grad

    flash_y, flash_grad = run(SDPBackend.FLASH_ATTENTION)  # only flash allowed: raises if it cannot run
    math_y, math_grad = run(SDPBackend.MATH)
    assert relative_error(flash_y, math_y) < 2e-2
    assert relative_error(flash_grad, math_grad) < 2e-2


# ---------------------------------------------------------------- train() on the GPU

@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def tiny_cuda(data_cache):
    """A tiny run on the GPU, through the real training loop."""
    def make(**train) -> RunConfig:
        settings = dict(batch_size=8, max_steps=6, eval_interval=3, warmup_steps=2, lr=1e-2, device="cuda",
                        dtype="float32")
        return RunConfig(model=ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=64),
                         data=DataConfig(corpus="fixture", bpe_vocab_size=300, cache_dir=data_cache),
                         train=TrainConfig(**(settings | train)), eval=EvalConfig(tokens=2048))
    return make


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ddp_step_with_nccl_on_one_process_matches_a_plain_step(tiny_cuda, tmp_path, monkeypatch):
    plain = train(tiny_cuda(), tmp_path / "plain", progress=False)

    backends = []
    real_init = dist.init_process_group

    def init_and_record(*args, **kwargs):
        real_init(*args, **kwargs)
        backends.append(dist.get_backend())

    monkeypatch.setattr(train_module.dist, "init_process_group", init_and_record)
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():  # what torchrun sets: a TCP store on loopback
        monkeypatch.setenv(name, value)
    ddp = train(tiny_cuda(), tmp_path / "ddp", progress=False)

    assert backends == ["nccl"] and not dist.is_initialized()  # train() made the group and closed it
    assert ddp["step"] == plain["step"] and ddp["tokens"] == plain["tokens"]
    assert ddp["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-4)
    assert ddp["val_loss"] == pytest.approx(plain["val_loss"], abs=1e-4)
    a, b = load_checkpoint(tmp_path / "plain").model.state_dict(), load_checkpoint(tmp_path / "ddp").model.state_dict()
    assert max(relative_error(b[k], a[k]) for k in a) < 1e-4


def test_compile_on_and_off_give_the_same_loss(tiny_cuda, tmp_path):
    """In bf16, as the paper presets train; compared at the first evaluation, before the two runs'
    rounding differences (fused kernels round elsewhere) have had many steps to grow."""
    train(tiny_cuda(dtype="bfloat16"), tmp_path / "eager", progress=False)
    train(tiny_cuda(dtype="bfloat16", compile=True), tmp_path / "compiled", progress=False)
    eager, compiled = (read_metrics(tmp_path / name) for name in ("eager", "compiled"))
    assert [m["step"] for m in compiled] == [m["step"] for m in eager] == [3, 6]
    assert compiled[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], abs=2e-2)
    assert compiled[0]["val_loss"] == pytest.approx(eager[0]["val_loss"], abs=2e-2)
    assert all(math.isfinite(m["val_loss"]) for m in compiled)
    keys = load_checkpoint(tmp_path / "compiled").model.state_dict().keys()
    assert not any(k.startswith("_orig_mod.") for k in keys)  # checkpoints hold the plain module


def test_float16_trains_with_the_grad_scaler(tiny_cuda, tmp_path):
    final = train(tiny_cuda(dtype="float16", max_steps=20, eval_interval=10), tmp_path / "fp16", progress=False)
    assert final["val_loss"] < math.log(300)  # below a uniform guess over the 300-token vocabulary
    assert read_checkpoint(tmp_path / "fp16")["train"]["scaler"]["scale"] > 0  # the scaler ran (enabled)


def test_training_resumes_on_the_gpu_exactly(tiny_cuda, tmp_path, monkeypatch):
    cfg = tiny_cuda()
    cfg.model.dropout = 0.1  # the dropout masks after resuming come from the restored CUDA RNG state
    whole = train(cfg, tmp_path / "whole", progress=False)

    save = train_module.save_checkpoint

    def preempted_at_the_last_step(*args, step, **kwargs):
        if step == cfg.train.max_steps:
            raise KeyboardInterrupt
        return save(*args, step=step, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", preempted_at_the_last_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "resumed").step == cfg.train.eval_interval
    resumed = train(cfg, tmp_path / "resumed", progress=False)  # fused AdamW state on the GPU, CUDA RNG restored
    assert resumed["step"] == whole["step"]
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-4)
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-4)
