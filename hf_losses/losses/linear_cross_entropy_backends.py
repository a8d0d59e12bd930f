"""Peer kernels behind :func:`~hf_losses.losses.linear_cross_entropy.linear_cross_entropy`: Liger-Kernel's fused
linear cross-entropy (Hsu et al. 2024) and Apple's Cut Cross-Entropy (Wijmans et al. 2025), both Triton, CUDA only.

``backend="liger"`` / ``"cce"`` asks for one, ``"auto"`` takes the first that fits. A peer is used only for what it
computes exactly as ours does (``tests/losses/test_linear_cross_entropy_backends.py`` on CPU stand-ins,
``benchmarks/gpu_lm_loss.py`` on a GPU); for anything else -- not installed, not CUDA, an option it lacks, a dtype
it does not take -- the call goes to our kernel, with one log line per reason. Each returns what ours returns:
``(scale * loss_sum, scale * z_loss_sum)``.

Both peers read values on the host inside their kernels (Liger counts the non-ignored targets with ``.item()``;
CCE selects the valid rows): a device sync per call, which our kernel avoids.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from torch import Tensor

from hf_losses.compat import autocast_dtype
from hf_losses.losses.linear_cross_entropy import as_device_scalar

logger = logging.getLogger(__name__)

#: the options each peer computes as ours does (class weights with label smoothing: PyTorch's definition)
FEATURES = {
    "liger": {"bias", "class_weights", "label_smoothing", "z_loss", "softcap"},
    "cce": {"bias", "softcap", "token_weight"},
}
#: the dtypes of hidden states and head each peer takes (CCE's kernels are written for half precision)
DTYPES = {
    "liger": (torch.float32, torch.bfloat16, torch.float16),
    "cce": (torch.bfloat16, torch.float16),
}
_LOGGED: set[str] = set()


def requested_features(bias: Tensor | None, options: Any) -> set[str]:
    """The options of this call that a peer must support."""
    wanted = {
        "bias": bias is not None,
        "class_weights": options.class_weights is not None,
        "label_smoothing": options.label_smoothing > 0,
        "z_loss": options.z_loss > 0,
        "softcap": options.softcap is not None,
        "token_weight": options.token_weight is not None,
    }
    return {name for name, used in wanted.items() if used}


def choose_backend(backend: str, hidden_states: Tensor, weight: Tensor, bias: Tensor | None, options: Any) -> str:
    """The kernel this call runs: a peer's name, or "torch" (ours), logging why a requested peer is not used."""
    candidates = ("liger", "cce") if backend == "auto" else (backend,)
    reasons = []
    for name in candidates:
        reason = _why_not(name, hidden_states, weight, bias, options)
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    if backend != "auto" or any("not installed" not in reason for reason in reasons):
        _log_once(f"linear_cross_entropy: backend={backend!r} runs hf_losses' own kernel ({'; '.join(reasons)}).")
    return "torch"


def _why_not(name: str, hidden_states: Tensor, weight: Tensor, bias: Tensor | None, options: Any) -> str | None:
    """Why the peer ``name`` cannot compute this call exactly, or None when it can."""
    if not _installed(name):
        return "not installed"
    if not _on_cuda(hidden_states):
        return f"its Triton kernels run on CUDA only, not {hidden_states.device.type}"
    missing = requested_features(bias, options) - FEATURES[name]
    if missing:
        return f"computes no {', '.join(sorted(missing))}"
    if autocast_dtype(hidden_states.device.type) is not None:
        return "autocast is on (it would compute in the parameters' dtype)"
    if hidden_states.dtype != weight.dtype or hidden_states.dtype not in DTYPES[name]:
        return f"takes hidden states and head of one dtype in {[str(d) for d in DTYPES[name]]}"
    return None


def _on_cuda(tensor: Tensor) -> bool:
    return tensor.device.type == "cuda"


def _installed(name: str) -> bool:
    module = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}[name]
    return importlib.util.find_spec(module) is not None


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.warning(message)


def peer_linear_cross_entropy(
    backend: str, hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, options: Any
) -> tuple[Tensor, Tensor] | None:
    """The peer's ``(scale * loss_sum, scale * z_loss_sum)``, or None: our kernel computes this call."""
    name = choose_backend(backend, hidden_states, weight, bias, options)
    if name == "torch":
        return None
    try:
        total, z_total = (_liger if name == "liger" else _cce)(hidden_states, targets, weight, bias, options)
    except TypeError as error:  # an installed version with another signature
        _log_once(f"linear_cross_entropy: backend {name!r} refused the call ({error}); using hf_losses' kernel.")
        return None
    scale = as_device_scalar(options.scale, torch.float32, hidden_states.device)
    return total.float() * scale, z_total.detach().float() * scale


def _liger(
    hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, options: Any
) -> tuple[Tensor, Tensor]:
    """Liger's fused linear cross-entropy, summed (``reduction="sum"``), weight gradient accumulated in float32."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return_z_loss = options.z_loss > 0
    output = liger_fused_linear_cross_entropy(
        hidden_states.reshape(-1, hidden_states.shape[-1]),
        weight,
        targets.reshape(-1),
        bias=bias,
        ce_weight=options.class_weights,
        ignore_index=options.ignore_index,
        lse_square_scale=options.z_loss,
        label_smoothing=options.label_smoothing,
        reduction="sum",
        softcap=options.softcap,
        return_z_loss=return_z_loss,
        accum_dtype=torch.float32,
    )
    if not return_z_loss:
        return output, output.new_zeros(())
    if isinstance(output, tuple):  # liger-kernel < 0.6: (loss, z_loss)
        return output[0], output[1]
    return output.loss, output.z_loss


def _cce(
    hidden_states: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, options: Any
) -> tuple[Tensor, Tensor]:
    """Cut Cross-Entropy without gradient filtering (``filter_eps=None``: exact) and with float32 accumulation;
    per-token losses (``reduction="none"``) when tokens are weighted."""
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy

    extra = {} if bias is None else {"bias": bias}
    weighted = options.token_weight is not None
    losses = cce_linear_cross_entropy(
        hidden_states,
        weight,
        targets,
        ignore_index=options.ignore_index,
        softcap=options.softcap,
        reduction="none" if weighted else "sum",
        shift=False,
        filter_eps=None,
        accum_e_fp32=True,
        accum_c_fp32=True,
        **extra,
    )
    total = (losses.float().reshape(-1) * options.token_weight).sum() if weighted else losses
    return total, total.new_zeros(())
