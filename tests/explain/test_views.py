"""Feature maps, kernels, mistakes, and the figures drawn from them."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cnnlab.errors import ExplainError
from cnnlab.explain import (
    confident_mistakes,
    explain,
    feature_maps,
    layer_kernels,
    per_class_accuracy,
    render,
)
from cnnlab.models import create_model

from .conftest import hooks_on, preprocess


def test_feature_maps_are_the_layer_output(trained_patch_net, patch_test):
    x = preprocess(patch_test.images[:1])
    with torch.no_grad():
        expected = trained_patch_net.features.conv2(trained_patch_net.features.conv1(x).relu())[0]
    maps = feature_maps(trained_patch_net, x[0], "features.conv2")
    torch.testing.assert_close(maps, expected)
    assert hooks_on(trained_patch_net) == {}


def test_feature_maps_errors(trained_patch_net):
    image = torch.zeros(1, 16, 16)
    with pytest.raises(ExplainError, match="unknown layer 'features.conv7'"):
        feature_maps(trained_patch_net, image, "features.conv7")
    with pytest.raises(ExplainError, match="layer 'head.fc' outputs 5, not feature maps"):
        feature_maps(trained_patch_net, image, "head.fc")
    with pytest.raises(ExplainError, match="one C x H x W image"):
        feature_maps(trained_patch_net, torch.zeros(2, 1, 16, 16), "features.conv1")


def test_kernels_of_the_first_conv_or_of_a_named_block():
    model = create_model("lenet5-modern", num_classes=3, in_channels=1, input_size=16)
    name, weight = layer_kernels(model)
    assert name == "features.conv1.conv"
    assert torch.equal(weight, model.features.conv1.conv.weight.detach())
    name, weight = layer_kernels(model, "features.conv2")
    assert name == "features.conv2.conv" and weight.shape == (16, 6, 5, 5)
    with pytest.raises(ExplainError, match="layer 'head' has no convolution"):
        layer_kernels(model, "head")


def test_confident_mistakes_come_most_confident_first():
    probs = torch.tensor(
        [
            [0.9, 0.1],  # right
            [0.6, 0.4],  # wrong, 0.6
            [0.05, 0.95],  # wrong, 0.95
            [0.2, 0.8],  # right
            [0.7, 0.3],  # wrong, 0.7
        ]
    )
    labels = torch.tensor([0, 1, 0, 1, 1])
    assert confident_mistakes(probs, labels, k=2).tolist() == [2, 4]
    assert confident_mistakes(probs, labels, k=10).tolist() == [2, 4, 1]
    assert confident_mistakes(probs[:1], labels[:1]).tolist() == []


def test_per_class_accuracy_counts():
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    labels = torch.tensor([0, 1, 0, 2, 0, 1])
    rows = per_class_accuracy(predicted, labels, ("a", "b", "c", "d"))
    assert [(r.name, r.correct, r.total) for r in rows] == [
        ("a", 2, 3),
        ("b", 1, 2),
        ("c", 1, 1),
        ("d", 0, 0),
    ]
    assert rows[0].accuracy == pytest.approx(2 / 3)
    assert rows[3].accuracy != rows[3].accuracy  # nan for a class with no images


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_figures_are_written(tmp_path, trained_patch_net, patch_test):
    images = patch_test.images[:3]
    result = explain(trained_patch_net, preprocess(images), "gradcam")
    grid = render.explanation_grid(
        images,
        result.maps,
        ["a\nb", "c", "d"],
        ["x", "y", "z"],
        tmp_path / "sub" / "grid.png",
        title="t",
    )
    width, height = _png_size(grid)
    assert height > width  # one row per image, three columns
    colour = torch.stack([images[0].expand(3, -1, -1)] * 2)
    _png_size(
        render.explanation_grid(
            colour, result.maps[:2], ["a", "b"], ["x", "y"], tmp_path / "rgb.png"
        )
    )
    maps = feature_maps(trained_patch_net, preprocess(images[:1])[0], "features.act1")
    _png_size(render.feature_map_grid(maps, tmp_path / "fm.png"))
    _png_size(render.kernel_grid(torch.randn(8, 3, 3, 3), tmp_path / "rgb-kernels.png"))
    _png_size(render.kernel_grid(torch.randn(4, 6, 5, 5), tmp_path / "deep-kernels.png"))
    _png_size(render.mistakes_grid(images, ["1", "2", "3"], tmp_path / "mistakes.png"))
    _png_size(render.mistakes_grid(images[:0], [], tmp_path / "none.png"))


def test_user_text_is_drawn_as_typed(tmp_path):
    """Class names like '$x^$' or '$\\frac' would break matplotlib's mathtext if not escaped."""
    images = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    names = ["$\\frac{$", "<script>alert(1)</script>"]
    render.explanation_grid(
        images, torch.rand(1, 4, 4), [names[0]], [names[1]], tmp_path / "a.png", title="$$"
    )
    render.mistakes_grid(images, ["$x^$"], tmp_path / "b.png", title="$_$")
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()
