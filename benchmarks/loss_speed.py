"""Forward+backward time of hf-losses against the reference implementations, ratio ours/theirs in one run.

    python benchmarks/loss_speed.py [--repeats 20] [--devices cpu cuda] [--threads 1] [--losses focal ...]

Pairs (target: ratio <= 1.00 for each): cross_entropy vs F.cross_entropy; dice / tversky vs MONAI DiceLoss /
TverskyLoss; focal vs torchvision's focal-loss formula in its softmax form (``ce * (1 - p_t)**gamma``, five lines
of plain PyTorch) and vs MONAI FocalLoss (softmax); sigmoid_focal vs torchvision.ops.sigmoid_focal_loss (its formula
in plain PyTorch where torchvision cannot load). Shapes: 8x4x128x128 (segmentation: logits (N, C, H, W), labels
(N, H, W)) and 4096x1000 (classification). Each timing is the fastest of ``repeats`` forward+backward calls, ours
and theirs interleaved so that load on a shared machine hits both alike (on CUDA, between synchronisations).
``max abs diff`` compares the values where the two definitions coincide. A loss that is not available (e.g. the
segmentation module is absent) is reported as such. ``--devices`` defaults to the CPU, and CUDA when there is one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses import get_loss, list_losses

SHAPES = {"8x4x128x128": (8, 4, 128, 128), "4096x1000": (4096, 1000)}
# larger inputs (--shapes ...), where a GPU is bound by memory traffic rather than by kernel launches
LARGE_SHAPES = {"32x4x256x256": (32, 4, 256, 256), "65536x1000": (65536, 1000)}
ALL_SHAPES = {**SHAPES, **LARGE_SHAPES}


@dataclass
class Case:
    """One comparison: our loss and the peer, both as ``fn(logits) -> scalar``, plus a value check."""

    ours: str
    theirs: str
    shape: str
    our_fn: Callable[[Tensor], Tensor] | None
    their_fn: Callable[[Tensor], Tensor]
    # (our value, their value re-expressed on our definition), or None where definitions differ
    compare: Callable[[Tensor], tuple[float, float]] | None
    note: str = ""


def plain_sigmoid_focal(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """torchvision.ops.sigmoid_focal_loss (reduction="mean"), written out as in its source."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * loss
    return loss.mean()


def plain_softmax_focal(logits: Tensor, labels: Tensor, gamma: float = 2.0) -> Tensor:
    """The focal loss as torchvision writes it (``ce * (1 - p_t) ** gamma``), with a softmax: ``p_t = exp(-ce)``."""
    ce_loss = F.cross_entropy(logits, labels, reduction="none")
    p_t = torch.exp(-ce_loss)
    loss = ce_loss * ((1 - p_t) ** gamma)
    return loss.mean()


def build_cases(shape_name: str, device: torch.device) -> list[Case]:
    import monai.losses

    shape = ALL_SHAPES[shape_name]
    generator = torch.Generator().manual_seed(0)
    num_classes = shape[1]
    labels = torch.randint(0, num_classes, (shape[0],) + shape[2:], generator=generator).to(device)
    labels_channel = labels.unsqueeze(1)  # MONAI wants (N, 1, ...) class indices
    onehot = F.one_hot(labels, num_classes).movedim(-1, 1).float()
    multilabel = (torch.rand(shape, generator=generator) < 0.3).float().to(device)
    available = set(list_losses())
    cases: list[Case] = []

    def ours(name: str, target: Tensor, **kwargs) -> Callable[[Tensor], Tensor] | None:
        if name not in available:
            return None
        loss = get_loss(name, **kwargs).to(device)
        return lambda logits: loss(logits, target)

    # cross_entropy vs F.cross_entropy: identical definitions
    ce_theirs = lambda logits: F.cross_entropy(logits, labels)  # noqa: E731
    ce_ours = ours("cross_entropy", labels)
    cases.append(
        Case(
            "cross_entropy",
            "F.cross_entropy",
            shape_name,
            ce_ours,
            ce_theirs,
            lambda logits: (ce_ours(logits).item(), ce_theirs(logits).item()),
        )
    )

    # focal vs torchvision's formula with a softmax: identical definitions (no alpha)
    focal_plain = lambda logits: plain_softmax_focal(logits, labels)  # noqa: E731
    focal_ours = ours("focal", labels, gamma=2.0)
    cases.append(
        Case(
            "focal",
            "plain torch (torchvision formula, softmax)",
            shape_name,
            focal_ours,
            focal_plain,
            lambda logits: (focal_ours(logits).item(), focal_plain(logits).item()),
        )
    )

    # focal vs MONAI FocalLoss(use_softmax): MONAI's "mean" divides by N*C*pixels, ours by the N*pixels items
    monai_focal = monai.losses.FocalLoss(gamma=2.0, use_softmax=True, to_onehot_y=True).to(device)
    monai_focal_sum = monai.losses.FocalLoss(gamma=2.0, use_softmax=True, to_onehot_y=True, reduction="none")
    focal_theirs = lambda logits: monai_focal(logits, labels_channel)  # noqa: E731
    cases.append(
        Case(
            "focal",
            "monai FocalLoss(softmax)",
            shape_name,
            focal_ours,
            focal_theirs,
            lambda logits: (
                focal_ours(logits).item(),
                (monai_focal_sum(logits, labels_channel).sum() / labels.numel()).item(),
            ),
            "MONAI mean x C",
        )
    )

    # sigmoid_focal vs torchvision's (where installed) or its formula in plain torch: identical definitions
    try:
        from torchvision.ops import sigmoid_focal_loss

        sf_theirs = lambda logits: sigmoid_focal_loss(logits, multilabel, reduction="mean")  # noqa: E731
        sf_peer = "torchvision sigmoid_focal_loss"
    except Exception:  # torchvision absent (or built for another torch)
        sf_theirs = lambda logits: plain_sigmoid_focal(logits, multilabel)  # noqa: E731
        sf_peer = "plain torch (torchvision formula)"
    sf_ours = ours("sigmoid_focal", multilabel, alpha=0.25, gamma=2.0)
    cases.append(
        Case(
            "sigmoid_focal",
            sf_peer,
            shape_name,
            sf_ours,
            sf_theirs,
            lambda logits: (sf_ours(logits).item(), sf_theirs(logits).item()),
        )
    )

    # dice / tversky vs MONAI (segmentation shape only: on (N, C) logits there is no region to overlap)
    if len(shape) > 2:
        for name, peer, kwargs in (
            ("dice", monai.losses.DiceLoss, {}),
            ("tversky", monai.losses.TverskyLoss, {"alpha": 0.3, "beta": 0.7}),
        ):
            # per-image soft Dice/Tversky over all classes, smooth 1e-5 in numerator and denominator:
            # MONAI's defaults, averaged over (image, class) pairs -- the same definition as ours with
            # smooth=1e-5, include_background=True, per_image=True.
            their_loss = peer(softmax=True, to_onehot_y=True, smooth_nr=1e-5, smooth_dr=1e-5, **kwargs).to(device)
            their_fn = (lambda loss: lambda logits: loss(logits, labels_channel))(their_loss)
            our_fn = ours(name, labels, smooth=1e-5, include_background=True, per_image=True, **kwargs)
            compare = (
                None
                if our_fn is None
                else (lambda o, t: lambda logits: (o(logits).item(), t(logits).item()))(our_fn, their_fn)
            )
            cases.append(Case(name, f"monai {peer.__name__}", shape_name, our_fn, their_fn, compare))
    del onehot
    return cases


def time_pair(
    our_fn: Callable[[Tensor], Tensor],
    their_fn: Callable[[Tensor], Tensor],
    logits: Tensor,
    repeats: int,
    device: torch.device,
) -> tuple[float, float]:
    """Fastest forward+backward seconds of each, interleaved in alternating order, after two warm-up calls each.

    The minimum, as ``timeit`` advises: on a shared machine the slower runs measure the other processes. On the
    CPU the clock is this process's CPU time (one thread by default), which other processes barely change.
    """
    clock = time.process_time if device.type == "cpu" else time.perf_counter

    def once(fn: Callable[[Tensor], Tensor]) -> float:
        x = logits.detach().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        fn(x).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    for _ in range(2):
        once(our_fn), once(their_fn)
    ours, theirs = [], []
    for index in range(repeats):
        # alternating which goes first: the first call after the other's frees pays for fresh pages
        if index % 2 == 0:
            ours.append(once(our_fn))
            theirs.append(once(their_fn))
        else:
            theirs.append(once(their_fn))
            ours.append(once(our_fn))
    return min(ours), min(theirs)


def time_rounds(
    our_fn: Callable[[Tensor], Tensor],
    their_fn: Callable[[Tensor], Tensor],
    logits: Tensor,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[float, float, float]:
    """:func:`time_pair` ``--rounds`` times: the fastest times, and the median of the rounds' ratios (one round's
    ratio of two equal functions strays by a few percent on a shared CPU; the median of five by about one)."""
    rounds = [time_pair(our_fn, their_fn, logits, args.repeats, device) for _ in range(args.rounds)]
    ratio = statistics.median(ours / theirs for ours, theirs in rounds)
    return min(r[0] for r in rounds), min(r[1] for r in rounds), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []), help="cpu cuda"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads on CPU (default 1: on a shared machine, more threads than free "
        "cores makes OpenMP timings meaningless)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="ratio = median over this many interleaved rounds")
    parser.add_argument("--no-control", dest="control", action="store_false", help="skip the A/A control rows")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(ALL_SHAPES))
    parser.add_argument("--losses", nargs="+", default=None, help="only these of our losses")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for device_name in args.devices:
        run_device(torch.device(device_name), args)


def run_device(device: torch.device, args: argparse.Namespace) -> None:
    """The table of one device."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"\ndevice: {name}; torch {torch.__version__}; times: fastest of {args.rounds} x {args.repeats} "
        f"forward+backward calls; ratio: median over {args.rounds} rounds of ours / theirs"
    )
    header = (
        f"| {'loss':<14}| {'peer':<42}| {'input':<12}| {'ours ms':>8} | {'theirs ms':>9} | {'ratio':>5} "
        f"| max abs diff |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for shape_name in args.shapes:
        generator = torch.Generator().manual_seed(1)
        logits = (torch.randn(ALL_SHAPES[shape_name], generator=generator) * 2).to(device)
        for case in build_cases(shape_name, device):
            if args.losses and case.ours not in args.losses:
                continue
            if case.our_fn is None:
                print(
                    f"| {case.ours:<14}| {case.theirs:<42}| {shape_name:<12}| {'n/a':>8} | {'':>9} | {'':>5} | "
                    f"{'not registered':<12} |"
                )
                continue
            ours_s, theirs_s, ratio = time_rounds(case.our_fn, case.their_fn, logits, args, device)
            diff = ""
            if case.compare is not None:
                with torch.no_grad():
                    ours_v, theirs_v = case.compare(logits)
                diff = f"{abs(ours_v - theirs_v):.1e}"
                if case.note:
                    diff += f" ({case.note})"
            print(
                f"| {case.ours:<14}| {case.theirs:<42}| {shape_name:<12}| {ours_s * 1e3:>8.2f} | "
                f"{theirs_s * 1e3:>9.2f} | {ratio:>5.2f} | {diff:<12} |"
            )
        if args.control and device.type == "cpu":
            # A/A: F.cross_entropy against itself -- how far from 1.00 the harness reads two equal functions
            labels = torch.randint(0, logits.shape[1], (logits.shape[0],) + logits.shape[2:], generator=generator)
            same = lambda x, labels=labels: F.cross_entropy(x, labels)  # noqa: E731
            ours_s, theirs_s, ratio = time_rounds(same, same, logits, args, device)
            print(
                f"| {'(control)':<14}| {'F.cross_entropy vs itself: noise floor':<42}| {shape_name:<12}| "
                f"{ours_s * 1e3:>8.2f} | {theirs_s * 1e3:>9.2f} | {ratio:>5.2f} | {'':<12} |"
            )


if __name__ == "__main__":
    main()
