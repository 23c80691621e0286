"""A fine-tuning run in its own process, for the kill/resume and the two-process tests.

    python tests/train_worker.py RECIPE OUTPUT DATA [--kill-after-step N] [--resume]
        [--digest-dir DIR] [override ...]

``--kill-after-step N`` sends SIGKILL to this process right after optimiser step N (after the
checkpoint of that step, if any). ``--digest-dir`` writes ``rank<R>.txt`` with a SHA-256 of the
final weights of each process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
from pathlib import Path


class KillAfter:
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state, model):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("output")
    parser.add_argument("data")
    parser.add_argument("--kill-after-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--digest-dir", default=None)
    args, overrides = parser.parse_known_args()

    from bcosify.train import finetune

    callbacks = [KillAfter(args.kill_after_step)] if args.kill_after_step else []
    result = finetune(
        args.recipe,
        [f"output={args.output}", f"data.root={args.data}", *overrides],
        resume=args.resume,
        callbacks=callbacks,
    )
    if args.digest_dir:
        rank = int(os.environ.get("RANK", "0"))
        out = Path(args.digest_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.txt").write_text(digest(result.model))


if __name__ == "__main__":
    main()
