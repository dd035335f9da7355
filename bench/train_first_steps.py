"""Benchmark: how many first stage-1 steps the zero gate and Adam's eps waste, on the shipped profile.

Why: every instance branch ends in a tanh gate that starts at exactly zero, so at step 1 only the
gates get a gradient; everything behind them (token MLP, mask encoder, token maps, LayerNorms,
W_Qp/W_Kp/W_Vp/W_O) gets gradients proportional to tanh(gate), i.e. to the few warm-up learning
rates summed so far. AdamW divides by sqrt(v_hat) + eps: while those gradients are below eps the
update is a fraction |g| / eps of the intended one, and the text path barely moves.

Measured per optimizer step, over the elements behind the gates: the median |g| (after clipping), and
the median share of the intended Adam step actually taken, sqrt(v_hat) / (sqrt(v_hat) + eps)
(1 = the full step, 0.5 = |g| at eps). A step is counted "wasted" when that share is below 0.5.

    python bench/train_first_steps.py                   # shipped eps, 120 steps
    python bench/train_first_steps.py --eps 1e-8 --steps 300

The tiny bundle stands in for SD 1.5 (no weights can be downloaded here): its gradients are of
another size than SD's, so the figure says whether the window exists and how it scales, not its
length on SD.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from mtcolor_batch.model.bundle import save_bundle
from mtcolor_batch.testing.synthetic import TruthFinder, write_shapes_folder
from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle
from mtcolor_batch.train.config import load_train_config
from mtcolor_batch.train.dataset import build_dataset
from mtcolor_batch.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eps", type=float, default=None, help="Adam eps (default: the shipped profile's)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--every", type=int, default=10, help="print every Nth step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[tuple[int, float, float, float]] = []

    def after_step(optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        grads, shares = [], []
        gate = 0.0
        eps = optimizer.param_groups[0]["eps"]
        beta2 = optimizer.param_groups[0]["betas"][1]
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.numel() == 1:  # the tanh gates
                    gate = max(gate, float(p.detach().abs()))
                    continue
                state = optimizer.state[p]
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
                grads.append(p.grad.detach().abs().flatten())
                shares.append((v_hat.sqrt() / (v_hat.sqrt() + eps)).flatten())
        rows.append(
            (len(rows) + 1, float(torch.cat(grads).median()), float(torch.cat(shares).median()), gate)
        )

    handle = register_optimizer_step_post_hook(after_step)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = write_tiny_bundle(root / "tiny", perception=False)
        save_bundle(bundle, name="tiny-random", revision="seed-0", tiny=True)
        truth = write_shapes_folder(root / "photos", 16, size=args.resolution, seed=0)
        build_dataset(root / "photos", root / "data", finder=TruthFinder(truth, ("red", "royal blue")))
        overrides: dict[str, object] = {
            "steps": args.steps,
            "resolution": args.resolution,
            "num_workers": 0,
            "cache_latents": True,
            "checkpoint_every": args.steps,
            "log_every": args.steps,
            "max_instances": 2,
        }
        if args.eps is not None:
            overrides["adam_eps"] = args.eps
        cfg = load_train_config(None, overrides)
        print(
            f"shipped stage-1 profile: lr {cfg.lr:g}, warm-up {cfg.warmup_steps}, batch {cfg.batch_size} x "
            f"{cfg.grad_accum}, weight decay {cfg.weight_decay:g}, clip {cfg.max_grad_norm:g}, "
            f"adam_eps {cfg.adam_eps:g}; tiny bundle at {args.resolution} px"
        )
        train(stage=1, data=root / "data", bundle=bundle, out=root / "s1", config=cfg, device="cpu")
        shutil.rmtree(root / "s1", ignore_errors=True)
    handle.remove()
    print("step  median|g| behind gate  share of Adam step  max|gate|")
    for step, grad, share, gate in rows:
        if step <= 3 or step % args.every == 0 or step == len(rows):
            print(f"{step:4d}  {grad:20.3e}  {share:18.3f}  {gate:9.2e}")
    wasted = [step for step, _, share, _ in rows if share < 0.5]
    print(
        f"steps with under half the Adam step behind the gates: {len(wasted)} of {len(rows)}"
        + (f" (last: {wasted[-1]})" if wasted else "")
    )


if __name__ == "__main__":
    main()
