"""The Python API end to end: train LeNet, SWIM sensitivities, select, Monte-Carlo.

    python examples/api_quickstart.py            # real Fashion-MNIST, 2 epochs
    python examples/api_quickstart.py --quick    # 5,000 training images, 1 epoch
"""

import argparse

import swimkit
from swimkit.data import Batches, preload
from swimkit.training import TrainConfig, train

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()

dataset = swimkit.load_dataset("fashion-mnist")  # /usr/share/datasets, --data-dir or download
if args.quick:
    dataset = dataset.subset(n_train=5000)
model = swimkit.build_model("lenet", seed=0)      # a plain torch.nn.Module
train(model, dataset, TrainConfig(epochs=1 if args.quick else 2))

batches = Batches(dataset.train, dataset, batch_size=128)   # any iterable of (x, y)
sens = swimkit.sensitivity(model, batches, engine="swim")
print("h, g of fc1:", sens.second["fc1.weight"].shape, sens.first["fc1.weight"].shape)

plan = swimkit.select(model, sens, fraction=0.1, method="swim")
print(f"verify {plan.weights_verified:,} of {plan.weights_total:,} weights")

test_batches = preload(dataset.test, dataset, batch_size=256)
device = swimkit.DeviceModel(sigma=0.3, sigma_verified=0.03)
for name, which in (("no verify", "none"), ("swim 10%", plan), ("full verify", "all")):
    res = swimkit.evaluate(model, test_batches, device, plan=which, samples=20, seed=0)
    low, high = res.ci95
    print(f"{name:12s} {res.mean:.2f} % +- {res.std:.2f} (95% CI {low:.2f}-{high:.2f})")
