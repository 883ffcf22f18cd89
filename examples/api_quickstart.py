"""The Python API end to end: a chip, noise-aware training, sensitivities, plans, Monte-Carlo.

    python examples/api_quickstart.py            # real Fashion-MNIST, 10 epochs
    python examples/api_quickstart.py --quick    # 5,000 training images, 1 epoch
"""

import argparse

import swimkit
from swimkit.data import Batches, preload

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()

dataset = swimkit.load_dataset("fashion-mnist")  # /usr/share/datasets, --data-dir or download
if args.quick:
    dataset = dataset.subset(n_train=5000)
model = swimkit.build_model("lenet", seed=0)      # a plain torch.nn.Module
# the chip: Gaussian devices on the idealised crossbar, every conv / linear weight on devices
chip = swimkit.ChipSpec(swimkit.GaussianDevice(sigma=0.3, sigma_verified=0.03))
# noise-aware training; the noise follows each layer's range max|W|, as device errors do
swimkit.train(model, dataset, chip=chip, epochs=1 if args.quick else 10, sigma_train=0.1,
              scale_aware=True)
model.eval()

batches = Batches(dataset.train, dataset, batch_size=128)   # any iterable of (x, y)
sens = swimkit.sensitivity(model, batches, engine="ggn")     # or "swim" (SWIM's one pass)
print("h, g of fc1:", sens.second["fc1.weight"].shape, sens.first["fc1.weight"].shape)

swim = swimkit.select(model, sens, chip=chip, method="swim", fraction=0.1)
plan = swimkit.select(model, sens, chip=chip, method="allocate", speedup=10.0)
print(f"allocate: {plan.devices_verified:,} of {plan.devices_total:,} devices verified, "
      f"menu {[round(t, 3) for t in plan.menu]}, speedup {plan.programming.speedup:.2f}x")
plan.levels["fc1.weight"]            # uint8 (120, 784, 8): 0 = plain write, k = menu[k-1]

test_batches = preload(dataset.test, dataset, batch_size=256)
full = swimkit.evaluate(model, test_batches, chip, "all", samples=20, seed=0)
for name, which in (("no verify", "none"), ("swim 10%", swim), ("allocate 10x", plan)):
    res = swimkit.evaluate(model, test_batches, chip, which, samples=20, seed=0)
    low, high = res.ci95
    gap = res.paired_difference(full)  # same chips: the gap's own confidence interval
    print(f"{name:12s} {res.mean:.2f} % +- {res.std:.2f} (95% CI {low:.2f}-{high:.2f}), "
          f"p05 {res.p05:.2f}, {gap.mean:+.2f} points to full verify")
print(f"{'full verify':12s} {full.mean:.2f} %")

# the same devices on 256x256 tiles with a range per column and differential pairs: a plan
# is for the chip it was made on, so it is priced for the new one explicitly
tiled = chip.replace(crossbar=swimkit.Crossbar(tile_rows=256, tile_columns=256,
                                               ranges="column", signed="pair"))
moved = tiled.priced(plan, model)
res = swimkit.evaluate(model, test_batches, tiled, moved, samples=20, seed=0)
print(f"{'on tiles':12s} {res.mean:.2f} % at {moved.programming.speedup:.2f}x")
