"""Train swimkit's LeNet on Fashion-MNIST with aihwkit-lightning's hardware-aware recipe and
save it for swimkit: every weight gets Gaussian noise per output channel in each training
forward (``WeightNoiseInjectionType.ADD_NORMAL_PER_CHANNEL``, ``--std`` times the channel's
largest |w|) and is clipped at ``--clip`` standard deviations per channel after every step
(``WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL``), through ``AnalogOptimizer``; Adam 1e-3,
batch 128. The default noise, 0.042, is aihwkit's PCM programming spread at g_max over
g_max (1.0554 uS of 25 uS).

    python examples/aihwkit_lightning_lenet.py --out runs/lightning/lenet.pt
    python examples/aihwkit_lightning_lenet.py --quick --out /tmp/lenet.pt   # 1 epoch, 5,000 images
    swimkit sweep --checkpoint runs/lightning/lenet.pt --model lenet --device-model aihwkit-pcm ...

The file holds the trained layers' tensors (aihwkit-lightning's state dict: weights,
biases and its input-range entries, which swimkit leaves out when it reads the file).
Needs ``pip install --no-deps aihwkit-lightning`` (it pins an older torch).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import swimkit
from swimkit.data import Batches
from swimkit.interop.aihwkit import _lib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--std", type=float, default=0.042)
    parser.add_argument("--clip", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/lightning/lenet.pt")
    parser.add_argument("--quick", action="store_true",
                        help="a check that it runs: one epoch on 5,000 training images")
    args = parser.parse_args()
    if args.quick:
        args.epochs = 1

    conversion = _lib.lightning("aihwkit_lightning.nn.conversion")
    configs = _lib.lightning("aihwkit_lightning.simulator.configs")
    optim = _lib.lightning("aihwkit_lightning.optim")
    config = configs.TorchInferenceRPUConfig()
    config.modifier.noise_type = configs.WeightNoiseInjectionType.ADD_NORMAL_PER_CHANNEL
    config.modifier.std_dev = args.std
    config.clip.type = configs.WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL
    config.clip.sigma = args.clip

    torch.manual_seed(args.seed)
    dataset = swimkit.load_dataset("fashion-mnist", data_dir=args.data_dir)
    if args.quick:
        dataset = dataset.subset(n_train=5000)
    model = conversion.convert_to_analog(swimkit.build_model("lenet", seed=args.seed), config)
    optimizer = optim.AnalogOptimizer(torch.optim.Adam, model.analog_layers,
                                      model.parameters(), lr=1e-3)
    train = Batches(dataset.train, dataset, batch_size=128, shuffle=True,
                    generator=torch.Generator().manual_seed(args.seed))
    test = Batches(dataset.test, dataset, batch_size=256)
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in test)
        print(f"epoch {epoch}/{args.epochs}: test acc {100 * correct / len(dataset.test):.2f}% "
              f"({time.time() - start:.1f} s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
