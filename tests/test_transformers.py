"""Transformers end to end: the zoo's ViT, torchvision's ViT and Swin, every engine, chips,
plans and training with the attention projections on devices."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import swimkit
from swimkit.chip import ChipSpec, Placement
from swimkit.models import ViT, build_model
from swimkit.sensitivity import ENGINES
from swimkit.sensitivity.swim import CurvaturePass, UnsupportedOperation, trace


def batches(shape, classes=10, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,),
                                                                  generator=gen))]


def small_vit():
    """A two-block ViT, its weights drawn from a fixed seed."""
    torch.manual_seed(0)
    return ViT(dim=16, depth=2, heads=2, mlp_dim=32).eval()


def quick(engine: str, probes: int = 2) -> dict:
    """The options that keep ``engine`` quick: few probes where it takes probes (an
    estimate's accuracy is not what these tests hold)."""
    return {"probes": probes} if "probes" in ENGINES.get(engine).options else {}


def test_every_attention_projection_is_a_device_weight():
    """The ViT's patch embedding, every block's packed q, k, v, its out_proj and MLP,
    and the head are device weights."""
    names = list(swimkit.device_weights(build_model("vit")))
    assert names[0] == "conv_proj.weight" and names[-1] == "head.weight"
    for block in range(4):
        for part in ("self_attention.in_proj_weight", "self_attention.out_proj.weight",
                     "mlp.0.weight", "mlp.2.weight"):
            assert f"blocks.{block}.{part}" in names
    assert len(names) == 4 * 4 + 2


@pytest.mark.parametrize("engine", ENGINES.names())
@pytest.mark.parametrize("name", ["vit", "qvit"])
def test_every_engine_runs_on_the_vit(name, engine):
    """Every registered engine gives finite sensitivities shaped like the ViT's device
    weights, non-zero on the attention projection."""
    model = build_model(name, seed=0).eval()
    sens = swimkit.sensitivity(model, batches((1, 28, 28)), engine=engine,
                               options=quick(engine, probes=4))
    weights = swimkit.device_weights(model)
    assert sens.names == list(weights)
    for key, h in sens.second.items():
        assert h.shape == weights[key].value.shape and bool(torch.isfinite(h).all()), key
    assert float(sens.second["blocks.0.self_attention.in_proj_weight"].abs().sum()) > 0


def test_swim_and_ggn_rank_the_vit_weights_alike():
    """swim equals ggn on the head and shares its g everywhere; it ranks every weight
    like ggn (the cross terms it drops weigh least on the last layer)."""
    from scipy.stats import spearmanr

    model = small_vit()
    data = batches((1, 28, 28), n=8)
    swim = swimkit.sensitivity(model, data)
    ggn = swimkit.sensitivity(model, data, engine="ggn")
    torch.testing.assert_close(swim.second["head.weight"], ggn.second["head.weight"],
                               rtol=1e-4, atol=1e-9)
    for name in swim.names:
        torch.testing.assert_close(swim.first[name], ggn.first[name], rtol=1e-4, atol=1e-7)
        rho = spearmanr(swim.second[name].flatten(), ggn.second[name].flatten())[0]
        # the patch embedding sits under every block's dropped cross terms: weakest there
        assert rho > (0.2 if name == "conv_proj.weight" else 0.5), (name, rho)


def test_quantized_vit_quantizes_the_packed_projection():
    """qvit's packed in_proj_weight computes with its 8-bit quantized value."""
    from swimkit.quantization import fake_quantize

    model = build_model("qvit")
    attn = model.blocks[0].self_attention
    assert swimkit.quantization.is_quantized(attn, deep=False)
    raw = attn.parametrizations["in_proj_weight"].original
    assert not torch.equal(attn.in_proj_weight, raw)
    torch.testing.assert_close(attn.in_proj_weight, fake_quantize(raw, 8), rtol=0, atol=0)


def test_chips_perturb_the_attention_projection():
    """A chip's error on in_proj_weight alone changes the outputs; the model is untouched."""
    model = small_vit()
    name = "blocks.0.self_attention.in_proj_weight"
    weights = swimkit.device_weights(model, layers=["blocks.0.self_attention*"])
    assert set(weights) == {name, "blocks.0.self_attention.out_proj.weight"}
    x = batches((1, 28, 28))[0][0]
    clean = model(x)
    before = model.blocks[0].self_attention.in_proj_weight.detach().clone()
    delta = {name: torch.randn_like(before)}
    with swimkit.perturbed(model, weights, delta):
        assert not torch.allclose(model(x), clean)
    assert torch.equal(model.blocks[0].self_attention.in_proj_weight, before)
    torch.testing.assert_close(model(x), clean)


def test_a_plan_and_monte_carlo_over_the_vit():
    """A plan covers the attention projections; its chips are reproducible by seed."""
    model = small_vit()
    data = batches((1, 28, 28), n=16)
    sens = swimkit.sensitivity(model, data)
    device = swimkit.GaussianDevice()
    plan = swimkit.select(model, sens, method="allocate", chip=device, speedup=3.0)
    assert "blocks.1.self_attention.in_proj_weight" in plan.names
    result = swimkit.evaluate(model, data, device, plan=plan, samples=3, seed=0)
    again = swimkit.evaluate(model, data, device, plan=plan, samples=3, seed=0)
    assert torch.equal(result.accuracies, again.accuracies) and result.samples == 3


def test_noise_training_reaches_the_attention_projection():
    """Noise injection perturbs in_proj_weight, its gradient reaches the parameter, and
    the parameter is untouched afterwards."""
    from swimkit.noise_injection import NoiseInjector

    model = small_vit().train()
    attn = model.blocks[0].self_attention
    before = attn.in_proj_weight.detach().clone()
    x, y = batches((1, 28, 28))[0]
    injector = NoiseInjector(model, ChipSpec(swimkit.GaussianDevice()), seed=0,
                             scale_aware=True)
    assert "blocks.0.self_attention.in_proj_weight" in injector.weights
    with injector.epoch(0) as redraw:
        redraw()
        noisy = model(x)
        torch.nn.functional.cross_entropy(noisy, y).backward()
    assert attn.in_proj_weight.grad is not None and bool(attn.in_proj_weight.grad.any())
    assert torch.equal(attn.in_proj_weight.detach(), before)
    assert not torch.allclose(noisy, model(x))


def test_torchvision_vit_b_16_passes_the_graph_check():
    """Every op of torchvision's vit_b_16 on the path to the loss has a rule."""
    model = torchvision.models.vit_b_16().eval()
    weights = swimkit.device_weights(model)
    run = CurvaturePass(model, trace(model), weights)  # every op on the path has a rule
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in weights
    assert len(run.rules) > 100


@pytest.mark.parametrize("engine", ENGINES.names())
def test_torchvision_vision_transformer_runs_every_engine(engine):
    """torchvision's VisionTransformer as written (vit_b_16's class, a small size)."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=10).eval()
    sens = swimkit.sensitivity(model, batches((3, 32, 32), n=2), engine=engine,
                               options=quick(engine))
    assert all(bool(torch.isfinite(h).all()) for h in sens.second.values())
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_weight" in sens.names


def test_torchvision_swin_t_passes_the_graph_check():
    """Every op of torchvision's swin_t on the path to the loss has a rule."""
    model = torchvision.models.swin_t().eval()
    weights = swimkit.device_weights(model)
    run = CurvaturePass(model, trace(model), weights)
    assert "features.1.0.attn.qkv.weight" in weights and len(run.rules) > 100


@pytest.mark.parametrize("engine", ENGINES.names())
def test_torchvision_swin_runs_every_engine(engine):
    """torchvision's SwinTransformer as written (swin_t's class, a small size, shifted
    windows and a patch merging that pads)."""
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2],
        num_classes=10).eval()
    sens = swimkit.sensitivity(model, batches((3, 20, 20), n=2), engine=engine,
                               options=quick(engine))
    assert all(bool(torch.isfinite(h).all()) for h in sens.second.values())
    assert bool(sens.second["features.1.1.attn.qkv.weight"].any())


def test_stochastic_depth_is_the_identity_in_eval_mode():
    """Stochastic depth in eval mode changes no sensitivity; in training it is refused."""
    model = nn.Sequential(nn.Linear(4, 4), torchvision.ops.StochasticDepth(0.5, "row"),
                          nn.Linear(4, 3)).eval()
    reference = nn.Sequential(model[0], model[2]).eval()
    data = batches((4,), classes=3)
    got, expected = swimkit.sensitivity(model, data), swimkit.sensitivity(reference, data)
    torch.testing.assert_close(got.second["0.weight"], expected.second["0.weight"])
    with pytest.raises(UnsupportedOperation, match="stochastic depth in training mode"):
        swimkit.check_rule(torchvision.ops.stochastic_depth, torch.randn(3, 4), p=0.5,
                           mode="row", training=True)


class RawProjection(nn.Module):
    """A model whose first weight is a raw parameter used through ``@``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Parameter(torch.randn(8, 16) * 0.3)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(x @ self.proj))


@pytest.mark.parametrize("engine", ["swim", "ggn"])
def test_a_named_parameter_is_mapped_planned_and_sampled(engine):
    """A raw parameter named in the chip's placement gets a sensitivity, is planned and
    priced like a weight, and gets errors drawn on every chip."""
    model = RawProjection().eval()
    data = batches((8,), classes=3)
    dm = swimkit.GaussianDevice(sigma=0.3, sigma_verified=0.03)
    chip = ChipSpec(dm, placement=Placement(params=["proj"]))
    sens = swimkit.sensitivity(model, data, engine, chip=chip)
    assert set(sens.second) == {"proj", "head.weight"}
    assert float(sens.second["proj"].abs().sum()) > 0
    plan = swimkit.select(model, sens, method="allocate", speedup=2.0, chip=chip)
    assert int(plan.levels["proj"].gt(0).sum()) > 0  # planned and priced like a weight
    none = swimkit.evaluate(model, data, chip, "none", samples=6)
    with pytest.warns(UserWarning, match=r"proj.*map them with params"):
        digital = swimkit.evaluate(model, data, dm, "none", samples=6)
    assert not torch.equal(none.accuracies, digital.accuracies)  # its errors are drawn
    assert swimkit.evaluate(model, data, chip, plan, samples=6).samples == 6
    magnitude = swimkit.select(model, None, method="magnitude", fraction=0.5, chip=chip)
    assert "proj" in magnitude.levels


def test_map_params_reaches_the_chip_and_only_then_the_cache_keys():
    """--map-params becomes the chip's placement, and only then changes the cache key."""
    from swimkit.caches import evaluation_key
    from swimkit.cli import parse

    def settings(*extra):
        return parse(["sweep", "--model", "lenet", *extra]).settings()

    plain, mapped = settings(), settings("--map-params", "blocks.*.qkv,pos")
    assert mapped.chip.placement.params == ("blocks.*.qkv", "pos")
    assert mapped.chip.placement.describe() == {"params": ["blocks.*.qkv", "pos"]}
    assert plain.chip.placement.describe() == {}
    assert evaluation_key(plain) != evaluation_key(mapped)


def test_noise_training_perturbs_the_weights_on_devices_only():
    """The chip's placement holds in training too: exclude keeps a layer digital,
    params adds a raw parameter."""
    from swimkit.noise_injection import NoiseInjector
    from swimkit.training import TrainConfig

    model = RawProjection()
    config = TrainConfig(sigma_train=0.1)
    default = NoiseInjector.create(model, config, None)
    assert set(default.weights) == {"head.weight"}
    mapped = NoiseInjector.create(model, config, ChipSpec(
        placement=Placement(params=["proj"], exclude=["head"])))
    assert set(mapped.weights) == {"proj"}
    assert mapped.describe()["weights"] == {"exclude": ["head"], "params": ["proj"]}
    with mapped.epoch(1) as redraw:
        redraw()
        noisy = model.proj.detach().clone()
        head = model.head.weight.detach().clone()
    assert not torch.equal(noisy, model.proj.detach())  # the raw parameter got noise
    assert torch.equal(head, model.head.weight.detach())  # the excluded layer did not
