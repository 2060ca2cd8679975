"""The engines' CUDA code paths, run without a GPU on fake CUDA tensors.

The real-size training steps of the baseline and dcac engines (CLIP ViT-B/16 Re-ID model;
for dcac the SD v1.5 U-Net with LoRA and the VAE: the configs ``dcac bench train`` and
``dcac stats`` build, randomly initialised, nothing downloaded) are built on the meta device
with FakeTensors that present as ``cuda:0`` tensors, while torch.cuda reports one GPU
(tests/fake_cuda.py; every patch is undone after this module). The engines then take their
GPU paths: ``use_gpu``, their device, ``.cuda()`` and ``.to(device)`` moves, CUDA autocast
in fp16 and bf16 (with CUDA's op lists: norms in float32, where CPU autocast keeps the
lower precision) and ``GradScaler('cuda')``. FakeTensor carries devices and dtypes through
every operation and raises on a CPU tensor mixed with CUDA ones (a ``torch.arange`` without
``device=``, a buffer or a noise schedule not moved). Convolutions, batched products and
attention reject operands of different dtypes in their meta kernels, and
``fake_cuda.MatrixProductDtypes`` makes the other matrix products (``nn.Linear``'s) do so too,
as CUDA does: a half-precision activation reaching a float32 layer outside autocast fails
here on the CPU, not only on a GPU.

Checked: the training forward (model, loss terms, total loss, as the engines'
``forward_backward`` runs it; for dcac with the latent cache and with the VAE encoding every
step) and its loss scaling, the eval-mode forward under autocast, and feature extraction
from CPU loader batches.

What this cannot cover:

- the backward pass, the optimizer step and the scaler's inf check and update: autograd's
  engine needs a real CUDA context to run a backward on CUDA tensors (it records the graph
  here, but cannot execute it), and reading values back (``.item()``) is impossible on
  tensors without data;
- real kernels and numerics: no value is computed, so overflow, NaNs, fp16 underflow,
  cuDNN/cuBLAS algorithm choice, nondeterminism and speed are not checked, nor whether a
  kernel exists for a dtype on a given GPU (e.g. bf16 on pre-Ampere cards);
- memory (see tests/test_memory_plan.py for the plan), multi-GPU and DDP, NCCL, streams,
  pinned memory and data-loader workers, and torch.compile;
- dtype rules of other CUDA kernels that their meta kernels do not check;
- fp32 training on a GPU (``train.amp off``), where ``train.fused_lora``'s in-place product
  replaces peft's LoRA forward (under autocast it keeps peft's, as here), and configs other
  than the defaults (gradient checkpointing, other fine-tuning and condition modes);
- bf16 or fp16 support as a particular GPU reports it: the fake GPU says it computes bf16.

It runs where torch can record autograd operations on fake CUDA tensors without a driver
(probed once per module in a separate process, since where torch cannot, the process
aborts; skipped then, with the reason): on CUDA builds of torch without a GPU, as here. It
is meant to run on CPU-only builds and on machines with a GPU too; neither is checked yet.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Set, Tuple

import fake_cuda
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_leaves

from dcac_plugin.benchmarks.step import TrainingStep, benchmark_config, build_training_step

NUM_CLASSES = 751  # Market-1501's training identities, the default `dcac stats` plans for
BATCH = 8  # two identities of four images, as the PK sampler draws them
FEATURE_DIM = 512  # CLIP ViT-B/16's embedding
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Layers whose output dtypes show what autocast did: matrix products and norms.
RECORDED = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
CASES = ([("baseline", amp, True) for amp in AMP_DTYPES]
         + [("dcac", amp, cache) for amp in AMP_DTYPES for cache in (True, False)])
SCALAR = torch.Size([])


@pytest.fixture(scope="module")
def one_gpu() -> Iterator[torch.device]:
    """The fake GPU, for this module's tests (the patches are undone after the last one)."""
    reason = fake_cuda.unsupported_reason()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patches:
        fake_cuda.pretend_one_gpu(patches.setattr)
        yield fake_cuda.GPU


def cuda_step(engine: str, amp: str, latent_cache: bool = True) -> TrainingStep:
    """The real-size training step ``dcac bench train`` builds, on fake CUDA tensors."""
    cfg = benchmark_config(engine, amp=amp, latent_cache=latent_cache)
    return build_training_step(cfg, NUM_CLASSES, BATCH, device="meta", fake_device="cuda")


def networks(step: TrainingStep) -> Dict[str, nn.Module]:
    """The step's networks by a short name: reid, and for dcac condition, unet and vae."""
    named = {"reid": step.model}
    if step.feedback is not None:
        denoiser = step.feedback.denoiser
        named.update(condition=step.feedback.condition, unet=denoiser.unet, vae=denoiser.vae)
    return named


@contextlib.contextmanager
def output_dtypes(named: Dict[str, nn.Module]) -> Iterator[Dict[str, Set[torch.dtype]]]:
    """While active, records the dtypes the :data:`RECORDED` layers of ``named`` return,
    under ``'<network>.<layer class>'`` (exact classes: open_clip's LayerNorm subclass casts
    its output back to the input's dtype, so it shows nothing of autocast)."""
    seen: Dict[str, Set[torch.dtype]] = defaultdict(set)

    def recorder(key: str):
        def hook(module, inputs, output):
            if torch.is_tensor(output):
                seen[key].add(output.dtype)
        return hook

    handles = [layer.register_forward_hook(recorder(f"{name}.{type(layer).__name__}"))
               for name, network in named.items() for layer in network.modules() if type(layer) in RECORDED]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class ForwardRun:
    """A training forward on the fake GPU, as ``forward_backward`` runs it, and its loss scaled."""

    engine: str
    amp: str
    latent_cache: bool
    step: TrainingStep
    output: object
    terms: Dict[str, torch.Tensor]
    loss: torch.Tensor
    scaled: torch.Tensor
    dtypes: Dict[str, Set[torch.dtype]]


def case_id(case: Tuple[str, str, bool]) -> str:
    engine, amp, latent_cache = case
    return f"{engine}-{amp}" + ("" if engine == "baseline" else "-cache" if latent_cache else "-vae")


@pytest.fixture(scope="module", params=CASES, ids=map(case_id, CASES))
def forward_run(request, one_gpu) -> ForwardRun:
    engine, amp, latent_cache = request.param
    step = cuda_step(engine, amp, latent_cache)
    with step.scope():
        with fake_cuda.MatrixProductDtypes(), output_dtypes(networks(step)) as dtypes:
            output, terms, loss = step.forward()
        scaled = step.engine.scaler.scale(loss)  # what forward_backward calls backward on
    return ForwardRun(engine, amp, latent_cache, step, output, terms, loss, scaled, dict(dtypes))


def step_tensors(step: TrainingStep) -> Iterator[Tuple[str, torch.Tensor]]:
    """Every tensor the step holds before its forward: weights, buffers, the loss modules'
    state (PCL memory), the optimizer's parameters, the batch and the cached posteriors."""
    engine = step.engine
    holders = {**networks(step), "memory": engine.memory, "criterion": engine.criterion}
    for name, module in holders.items():
        yield from ((f"{name}.{key}", tensor) for key, tensor in module.state_dict(keep_vars=True).items())
    for group, params in enumerate(g["params"] for g in step.optimizer.param_groups):
        yield from ((f"optimizer.group{group}[{i}]", param) for i, param in enumerate(params))
    yield from ((f"batch[{i}]", leaf) for i, leaf in enumerate(tree_leaves(step.data)) if torch.is_tensor(leaf))
    cache = getattr(engine, "latent_cache", None)
    if cache is not None:
        yield from (("latent_cache.mean", cache.mean), ("latent_cache.std", cache.std))


# ------------------------------------------------------------------ the fake GPU's tools


def test_fake_device_is_for_steps_built_on_meta_only():
    with pytest.raises(ValueError, match="fake_device 'cuda' is for steps built on meta, not on 'cpu'"):
        build_training_step(benchmark_config("baseline"), device="cpu", fake_device="cuda")



def test_mixed_dtype_matrix_products_fail_as_on_cuda(one_gpu):
    # FakeTensor alone lets an fp16 input through a float32 nn.Linear outside autocast
    # (its addmm meta kernel checks no dtypes); CUDA raises, and so must the forward's check.
    with FakeTensorMode(), fake_cuda.MatrixProductDtypes():
        layer = nn.Linear(4, 4, device=one_gpu)
        with pytest.raises(RuntimeError, match="need one dtype"):
            layer(torch.ones(2, 4, device=one_gpu, dtype=torch.float16))
        with torch.autocast("cuda", dtype=torch.float16):  # autocast casts the weight: one dtype
            assert layer(torch.ones(2, 4, device=one_gpu)).dtype == torch.float16


# ------------------------------------------------------------------- the training forward


def test_engine_runs_on_the_gpu_with_everything_it_holds(forward_run, one_gpu):
    engine = forward_run.step.engine
    assert engine.use_gpu and engine.device == one_gpu and engine.amp == forward_run.amp
    held: List[Tuple[str, torch.Tensor]] = list(step_tensors(forward_run.step))
    assert len(held) > 100  # weights of every network, not an empty walk
    assert [name for name, tensor in held if tensor.device != one_gpu] == []


def test_loss_terms_and_total_are_float32_scalars_on_the_gpu(forward_run, one_gpu):
    expected = {"loss_id", "loss_pcl"} | ({"loss_dif"} if forward_run.engine == "dcac" else set())
    assert set(forward_run.terms) == expected
    for name, value in {**forward_run.terms, "loss": forward_run.loss}.items():
        assert (value.device, value.dtype, value.shape) == (one_gpu, torch.float32, SCALAR), name
    assert forward_run.loss.requires_grad  # the graph a backward would run was recorded


def test_reid_outputs_come_from_autocast_matmuls(forward_run, one_gpu):
    output, low = forward_run.output, AMP_DTYPES[forward_run.amp]
    assert (output.logits.device, output.logits.dtype, output.logits.shape) == (one_gpu, low, (BATCH, NUM_CLASSES))
    assert (output.f_bn.device, output.f_bn.shape) == (one_gpu, (BATCH, FEATURE_DIM))
    # Every projection and the patch embedding of the ViT ran in the autocast dtype.
    assert forward_run.dtypes["reid.Linear"] == forward_run.dtypes["reid.Conv2d"] == {low}


def test_diffusion_branch_runs_under_cuda_autocast(forward_run):
    dtypes, low = forward_run.dtypes, AMP_DTYPES[forward_run.amp]
    if forward_run.engine == "baseline":
        assert not [key for key in dtypes if not key.startswith("reid.")]
        return
    # Convolutions, attention projections and LoRA adapters in the autocast dtype; the norms in
    # float32, as CUDA autocast runs them (CPU autocast would keep them in the lower precision).
    assert dtypes["unet.Conv2d"] == dtypes["unet.Linear"] == {low}
    assert dtypes["unet.GroupNorm"] == dtypes["unet.LayerNorm"] == {torch.float32}


def test_dcac_encodes_with_the_vae_only_without_the_latent_cache(forward_run):
    encoded = "vae.Conv2d" in forward_run.dtypes
    assert encoded == (forward_run.engine == "dcac" and not forward_run.latent_cache)
    if encoded:
        assert forward_run.dtypes["vae.Conv2d"] == {AMP_DTYPES[forward_run.amp]}
        assert forward_run.dtypes["vae.GroupNorm"] == {torch.float32}


def test_gradient_scaler_scales_fp16_losses_only(forward_run, one_gpu):
    scaler, loss, scaled = forward_run.step.engine.scaler, forward_run.loss, forward_run.scaled
    assert scaler.is_enabled() == (forward_run.amp == "fp16")
    assert (scaled.device, scaled.dtype, scaled.shape) == (one_gpu, torch.float32, SCALAR)
    if scaler.is_enabled():
        # Multiplied by the scale, which GradScaler('cuda') keeps on the loss's device.
        assert scaled is not loss and scaled.grad_fn.name() == "MulBackward0"
    else:
        assert scaled is loss


def test_train_amp_auto_on_a_gpu_with_bf16_trains_in_fp16_with_the_scaler(one_gpu):
    # The fake GPU reports native bf16, as the paper's A6000 and every recent GPU do; the paper
    # recipe's auto still gives the authors' fp16 autocast and gradient scaler.
    step = cuda_step("baseline", "auto")
    assert torch.cuda.is_bf16_supported(including_emulation=False)
    assert step.engine.device == one_gpu and step.engine.amp == "fp16" and step.engine.scaler.is_enabled()


# ------------------------------------------------------------------------ inference


@pytest.mark.parametrize("amp", AMP_DTYPES)
def test_eval_forward_under_cuda_autocast_gives_embeddings_on_the_gpu(one_gpu, amp):
    step = cuda_step("baseline", amp)
    with step.scope(), fake_cuda.MatrixProductDtypes(), output_dtypes({"reid": step.model}) as dtypes:
        features = step.inference()
    # Eval mode returns the normalised embedding (train mode: logits and features); the
    # normalisation's norm runs in float32 under CUDA autocast.
    assert (features.device, features.dtype, features.shape) == (one_gpu, torch.float32, (BATCH, FEATURE_DIM))
    assert dtypes["reid.Linear"] == {AMP_DTYPES[amp]}
    assert step.model.training  # inference() leaves the model as training found it


def test_feature_extraction_moves_loader_batches_to_the_gpu(one_gpu):
    step = cuda_step("baseline", "fp16")
    engine = step.engine
    with step.scope():
        images = torch.randn(BATCH, *step.data["img"].shape[1:])  # a data loader's batch, on the CPU
        loader = [{"img": images, "pid": torch.arange(BATCH), "camid": torch.zeros(BATCH, dtype=torch.long)}]
        engine.set_model_mode("eval")  # as torchreid's test() does before extracting
        with fake_cuda.MatrixProductDtypes(), output_dtypes({"reid": step.model}) as dtypes:
            features, pids, camids = engine.extract_split(loader)
    assert images.device.type == "cpu"
    assert (features.device, features.dtype, features.shape) == (one_gpu, torch.float32, (BATCH, FEATURE_DIM))
    assert pids.shape == camids.shape == (BATCH,)
    assert dtypes["reid.Linear"] == {torch.float32}  # extraction runs outside autocast, whatever train.amp
