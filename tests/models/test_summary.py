"""``summary``: the classic LeNet table, MAC formulas, memory, and leaving models untouched."""

from __future__ import annotations

from math import prod

import pytest
import torch
import torchinfo
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.models import create_model, list_models, model_options
from cnnlab.models.summary import LayerInfo, ModelSummary, summary


def test_lenet5_classic_shapes_and_parameters():
    info = summary("lenet5", (1, 28, 28))
    assert isinstance(info, ModelSummary)
    assert all(isinstance(layer, LayerInfo) for layer in info.layers)
    shapes = [layer.output_shape for layer in info.table()]
    order = [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120,), (84,), (10,)]
    positions = [shapes.index(s) for s in order]
    assert positions == sorted(positions)
    assert info.total_params == info.trainable_params == 61_706
    # conv1 28*28*6*1*25, conv2 10*10*16*6*25, then 400*120, 120*84, 84*10
    assert info.macs == 117_600 + 240_000 + 48_000 + 10_080 + 840
    assert info.flops == 2 * info.macs
    assert info.input_shape == (1, 28, 28)


def test_layer_names_are_module_names_and_depths_match():
    model = create_model("resnet18", input_size=32, stem="small")
    info = summary(model, (1, 32, 32))
    modules = dict(model.named_modules())
    assert all(layer.name in modules for layer in info.layers)
    assert all(layer.depth == layer.name.count(".") + 1 for layer in info.layers)
    assert all(layer.type == type(modules[layer.name]).__name__ for layer in info.layers)
    stage = info.layer("features.stage2")
    assert stage.params == sum(p.numel() for p in model.features.stage2.parameters())
    inside = [x.macs for x in info.table() if x.name.startswith("features.stage2.")]
    assert stage.macs == sum(inside) > 0
    assert [x.name for x in info.table(max_depth=1)] == ["features", "head"]
    assert sum(x.macs for x in info.table(max_depth=1)) == info.macs
    rows = info.to_rows()
    assert rows[0].keys() == {"name", "type", "output_shape", "params", "macs", "depth"}
    with pytest.raises(ModelError, match="no layer named 'nope'"):
        info.layer("nope")


class _Net(nn.Module):
    """Grouped, strided, rectangular and bias-free layers, to exercise the MAC formulas."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, (3, 5), stride=2, padding=1, bias=False)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.flat = nn.Flatten(1)
        self.fc = nn.Linear(8 * 8 * 7, 6, bias=False)

    def forward(self, x):
        return self.fc(self.flat(self.c(self.b(self.a(x)))))


def test_macs_follow_the_formula_and_match_torchinfo():
    model = _Net()
    info = summary(model, (4, 16, 16))
    by_name = {layer.name: layer for layer in info.layers}
    for name in ("a", "b", "c"):
        conv = getattr(model, name)
        c, h, w = by_name[name].output_shape
        expected = h * w * c * (conv.in_channels // conv.groups) * prod(conv.kernel_size)
        assert by_name[name].macs == expected
    assert by_name["fc"].macs == 8 * 8 * 7 * 6
    # torchinfo agrees on bias-free conv and linear layers (batch of one)
    stats = torchinfo.summary(_Net(), input_size=(1, 4, 16, 16), verbose=0)
    theirs = {li.var_name: li.macs for li in stats.summary_list if li.is_leaf_layer}
    assert {n: by_name[n].macs for n in ("a", "b", "c", "fc")} == {
        n: theirs[n] for n in ("a", "b", "c", "fc")
    }
    assert info.macs == stats.total_mult_adds


def test_activation_memory_counts_allocating_leaf_outputs():
    info = summary("lenet5", (1, 28, 28))
    # conv + sigmoid per conv layer, the pools, linear + sigmoid per hidden layer, the
    # logits; flatten is a view and adds nothing.
    elements = 2 * 6 * 28 * 28 + 6 * 14 * 14 + 2 * 16 * 10 * 10 + 16 * 5 * 5
    elements += 2 * 120 + 2 * 84 + 10
    assert info.activation_bytes == 4 * elements
    # In-place ReLU writes into its input: the modern LeNet needs less.
    assert summary("lenet5-modern", (1, 28, 28)).activation_bytes < info.activation_bytes


def test_summary_leaves_a_real_model_untouched():
    model = create_model("lenet5-bn")
    model.train()
    model.head.fc1.eval()  # a mixed state must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = summary(model, (1, 28, 28))
    assert info.total_params == sum(p.numel() for p in model.parameters())
    assert model.training and not model.head.fc1.training and model.features.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].device.type == "cpu" for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())
    out = model(torch.randn(2, 1, 28, 28))  # still a working CPU model
    assert out.shape == (2, 10)


def test_frozen_batch_norm_counts_as_untrainable():
    info = summary("lenet5", (1, 28, 28), norm="batch-frozen")
    frozen = 2 * (6 + 16 + 120 + 84)  # scale and shift of each norm layer
    assert info.total_params - info.trainable_params == frozen


@pytest.mark.parametrize("shape", [(28, 28), (1, 0, 28), (1, 28.0, 28), (1, 2, 3, 4)])
def test_bad_input_shape_is_refused(shape):
    with pytest.raises(ModelError, match="input shape"):
        summary("lenet5", shape)


def test_impossible_input_names_the_layer():
    with pytest.raises(
        ModelError, match=r"model 'lenet5': cannot take input 1x6x6: layer 'features"
    ):
        summary("lenet5", (1, 6, 6))


def test_options_only_with_a_name():
    with pytest.raises(ModelError, match="only apply"):
        summary(create_model("lenet5"), (1, 28, 28), norm="batch")


def _reference_count(model: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple]:
    """Output shape and MACs of every module from a real forward pass on the CPU.

    MACs come from the weight tensors (conv: ``out_c x in_c/groups x k_h x k_w`` per
    output pixel; linear: ``in x out`` per output vector), not from module attributes.
    """
    seen: dict[str, tuple] = {}

    def hook(name, module, args, out):
        macs = 0
        if isinstance(module, nn.Conv2d):
            macs = module.weight.numel() * out.shape[-2] * out.shape[-1]
        elif isinstance(module, nn.Linear):
            macs = module.weight.numel() * (out[0].numel() // module.out_features)
        seen[name] = (tuple(out.shape[1:]), macs)

    handles = [
        m.register_forward_hook(lambda mod, a, o, _n=n: hook(_n, mod, a, o))
        for n, m in model.named_modules()
        if n
    ]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, *shape))
    for h in handles:
        h.remove()
    return seen


# Each model at a small input and at another size, grayscale and RGB.
SIZES = {
    "alexnet": [(1, 67, 67), (3, 96, 96)],
    "alexnet-tv": [(1, 63, 63), (3, 80, 80)],
    "nin": [(1, 67, 67), (3, 96, 96)],
    "densenet121": [(1, 32, 32), (3, 45, 45)],
    "densenet169": [(1, 32, 32), (3, 45, 45)],
    "densenet-small": [(1, 32, 32), (3, 45, 45)],
}


@pytest.mark.parametrize("name", list_models())
def test_every_layer_matches_a_real_forward_pass(name):
    for shape in SIZES.get(name, [(1, 28, 28), (3, 33, 33)]):
        if name.startswith("vgg") and shape[1] < 32:
            shape = (shape[0], 32, 32)
        narrow = {"width": 0.25} if "width" in model_options(name) else {}  # only to save time
        model = create_model(name, in_channels=shape[0], input_size=shape[1:], **narrow)
        info = summary(model, shape)
        seen = _reference_count(model, shape)
        for layer in info.layers:
            assert layer.output_shape == seen[layer.name][0], (name, shape, layer.name)
        for layer in info.table():
            assert layer.macs == seen[layer.name][1], (name, shape, layer.name)
        assert info.macs == sum(seen[layer.name][1] for layer in info.table())


def test_transposed_conv_macs_count_each_input_element_once():
    """in_h * in_w * in_c * out_c / groups * k_h * k_w, not the conv formula on the output."""
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 8, 3, stride=2, bias=False),
        nn.ConvTranspose2d(8, 6, (2, 3), stride=2, padding=1, groups=2, bias=False),
    )
    info = summary(model, (4, 8, 8))
    first = 8 * 8 * 4 * 8 * 3 * 3
    assert info.layer("0").macs == first and info.layer("0").output_shape == (8, 17, 17)
    assert info.layer("1").macs == 17 * 17 * 8 * (6 // 2) * 2 * 3
    # Every product of the transposed conv, counted directly: one per weight per input pixel.
    x = torch.ones(1, 4, 8, 8)
    ones = nn.ConvTranspose2d(4, 8, 3, stride=2, bias=False)
    nn.init.ones_(ones.weight)
    assert ones(x).sum().item() == first
