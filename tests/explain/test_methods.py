"""Every method on real zoo networks; hooks, batching, targets and the errors users see."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import ExplainError, RegistryError
from cnnlab.explain import METHODS, MethodOptions, explain, list_methods, resolve_targets
from cnnlab.models import create_model

from .conftest import CLASSES, PatchNet, hooks_on, preprocess

ALL_METHODS = list_methods()


def test_registry_lists_the_eight_methods():
    assert set(ALL_METHODS) == {
        "cam",
        "gradcam",
        "gradcam++",
        "saliency",
        "smoothgrad",
        "integrated-gradients",
        "guided-backprop",
        "guided-gradcam",
    }
    assert METHODS.get("GradCAM") is METHODS.get("gradcam")  # names are normalized


@pytest.fixture(scope="module")
def zoo():
    """A ResNet-18 (small stem, colour 16x16) and a LeNet (grayscale 16x16), random weights."""
    torch.manual_seed(0)
    return {
        "resnet18": (
            create_model(
                "resnet18", num_classes=4, in_channels=3, input_size=16, stem="small"
            ).eval(),
            torch.randn(3, 3, 16, 16),
        ),
        "lenet5-modern": (
            create_model("lenet5-modern", num_classes=4, in_channels=1, input_size=16).eval(),
            torch.randn(3, 1, 16, 16),
        ),
    }


@pytest.mark.parametrize("model_name", ["resnet18", "lenet5-modern"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_each_method_gives_input_sized_maps(zoo, model_name, method):
    model, x = zoo[model_name]
    if method == "cam" and not model.gap_head:
        with pytest.raises(ExplainError, match="use --method gradcam"):
            explain(model, x, method)
        return
    options = MethodOptions(smoothgrad_samples=4, ig_steps=8)
    result = explain(model, x, method, batch_size=2, options=options)
    assert result.maps.shape == (3, 16, 16)
    assert result.maps.dtype == torch.float32
    assert torch.isfinite(result.maps).all()
    assert result.probs.shape == (3, 4)
    assert torch.equal(result.targets, result.predicted)
    assert hooks_on(model) == {}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_no_hooks_leak_and_repeated_calls_agree(trained_patch_net, patch_test, method):
    model = trained_patch_net
    model.train()  # the caller's mode must survive
    try:
        x = preprocess(patch_test.images[:4])
        inplace = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
        first = explain(model, x, method, options=MethodOptions(smoothgrad_samples=4, ig_steps=8))
        assert hooks_on(model) == {}
        second = explain(model, x, method, options=MethodOptions(smoothgrad_samples=4, ig_steps=8))
        assert hooks_on(model) == {}
    finally:
        was_training = model.training
        model.eval()
    assert was_training
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace == [True] * 3
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(first.maps, second.maps, rtol=0, atol=0)
    assert first.maps.abs().sum() > 0


@pytest.mark.parametrize("method", ALL_METHODS)
def test_batch_size_does_not_change_the_maps(trained_patch_net, patch_test, method):
    """Images are explained independently (eval mode), so chunking is only about memory."""
    x = preprocess(patch_test.images[:5])
    x[1] *= 5  # SmoothGrad's noise follows each image's own range, not the batch's
    options = MethodOptions(ig_steps=8, smoothgrad_samples=6, internal_batch_size=8)
    whole = explain(trained_patch_net, x, method, batch_size=5, options=options)
    pieces = explain(trained_patch_net, x, method, batch_size=2, options=options)
    torch.testing.assert_close(pieces.maps, whole.maps, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_internal_batch_does_not_change_the_result(
    trained_patch_net, patch_test
):
    x = preprocess(patch_test.images[:3])
    small = explain(
        trained_patch_net,
        x,
        "integrated-gradients",
        options=MethodOptions(ig_steps=16, internal_batch_size=4),
    )
    large = explain(
        trained_patch_net,
        x,
        "integrated-gradients",
        options=MethodOptions(ig_steps=16, internal_batch_size=512),
    )
    torch.testing.assert_close(small.attributions, large.attributions, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_is_complete(trained_patch_net, patch_test):
    """Attributions add up to score(x) - score(baseline) (Sundararajan et al.'s completeness)."""
    x = preprocess(patch_test.images[:4])
    baseline = preprocess(torch.zeros_like(patch_test.images[:1]))
    target = patch_test.labels[:4]
    result = explain(
        trained_patch_net,
        x,
        "integrated-gradients",
        target=target,
        options=MethodOptions(ig_steps=128, baseline=baseline),
    )
    with torch.no_grad():
        gap = (
            trained_patch_net(x).gather(1, target.view(-1, 1))[:, 0]
            - trained_patch_net(baseline)[0, target]
        )
    total = result.attributions.sum((1, 2, 3))
    torch.testing.assert_close(total, gap, rtol=0.05, atol=0.05)


def test_saliency_is_the_input_gradient(trained_patch_net, patch_test):
    x = preprocess(patch_test.images[:3]).requires_grad_(True)
    target = torch.tensor([0, 2, 4])
    trained_patch_net(x).gather(1, target.view(-1, 1)).sum().backward()
    expected = x.grad.abs().amax(1)
    trained_patch_net.zero_grad(set_to_none=True)
    result = explain(trained_patch_net, x.detach(), "saliency", target=target)
    torch.testing.assert_close(result.maps, expected)


def test_guided_backprop_handles_in_place_relus():
    """captum's guided backprop needs out-of-place ReLUs; the user's model keeps its own."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 3)
    ).eval()
    x = torch.randn(2, 1, 4, 4)
    result = explain(model, x, "guided-backprop", target=1)
    # Guided backprop by hand: zero the gradient wherever the ReLU's input or incoming gradient is negative.
    xg = x.clone().requires_grad_(True)
    pre = model[0](xg)
    act = pre.clamp(min=0)
    act.register_hook(lambda grad: grad.clamp(min=0))
    out = model[3](model[2](act))
    out[:, 1].sum().backward()
    expected = xg.grad.abs().amax(1)
    torch.testing.assert_close(result.maps, expected)
    assert model[1].inplace is True


def test_gradcam_default_layer_is_the_last_feature_map(zoo):
    model, x = zoo["lenet5-modern"]
    assert explain(model, x, "gradcam").layer == "features.conv2"
    plain = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.LazyLinear(3)
    )
    plain(torch.randn(1, 1, 8, 8))
    assert explain(plain.eval(), torch.randn(1, 1, 8, 8), "gradcam").layer == "2"


def test_any_named_module_can_be_the_layer(zoo):
    model, x = zoo["resnet18"]
    for layer in ("features.stem", "features.stage2.0.body.conv1.conv", "features.stage3"):
        result = explain(model, x, "gradcam", layer=layer)
        assert result.layer == layer
        assert result.maps.shape == (3, 16, 16)


# ------------------------------------------------------------------ targets


def test_targets_by_keyword_index_name_and_per_image():
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    classes = ("cat", "dog", "3")
    assert resolve_targets("pred", logits).tolist() == [1, 0]
    assert resolve_targets("true", logits, labels).tolist() == [2, 0]
    assert resolve_targets("dog", logits, classes=classes).tolist() == [1, 1]
    assert resolve_targets(0, logits).tolist() == [0, 0]
    assert resolve_targets("0", logits, classes=classes).tolist() == [0, 0]
    assert resolve_targets("3", logits, classes=classes).tolist() == [
        2,
        2,
    ]  # the name wins over the index
    assert resolve_targets([2, 1], logits).tolist() == [2, 1]


@pytest.mark.parametrize(
    ("target", "labels", "message"),
    [
        (
            "zebra",
            None,
            "target 'zebra' is not allowed; use pred, true, a class index 0..2, a class name",
        ),
        (7, None, "target 7 is not allowed"),
        ("true", None, "target 'true' needs the true labels"),
        ([0], None, "got 1 targets for 2 images"),
        ([0, 5], None, "class indices 0..2"),
        ("true", torch.tensor([1, 2, 0]), "got 3 labels for 2 images"),
    ],
)
def test_bad_targets_are_explained(target, labels, message):
    logits = torch.zeros(2, 3)
    with pytest.raises(ExplainError, match=message.replace(".", r"\.")):
        resolve_targets(target, logits, labels, classes=("a", "b", "c"))


def test_explain_uses_class_names(trained_patch_net, patch_test):
    x = preprocess(patch_test.images[:2])
    result = explain(trained_patch_net, x, "gradcam", target="bottom-left", classes=CLASSES)
    assert result.targets.tolist() == [2, 2]


# ------------------------------------------------------------------ errors


def test_unknown_method_lists_the_methods(trained_patch_net):
    with pytest.raises(
        RegistryError,
        match="unknown explanation method 'lime'; available: cam, gradcam, gradcam\\+\\+",
    ):
        explain(trained_patch_net, torch.zeros(1, 1, 16, 16), "lime")


def test_unknown_layer_lists_close_valid_names(trained_patch_net):
    with pytest.raises(ExplainError) as info:
        explain(trained_patch_net, torch.zeros(1, 1, 16, 16), "gradcam", layer="features.conv9")
    message = str(info.value)
    assert message.startswith("unknown layer 'features.conv9'; valid names include: features.conv")
    assert "\n" not in message


def test_layer_without_a_feature_map_is_refused(trained_patch_net):
    with pytest.raises(ExplainError, match="layer 'head.fc' outputs 5; gradcam needs"):
        explain(trained_patch_net, torch.zeros(1, 1, 16, 16), "gradcam", layer="head.fc")


def test_layer_with_an_input_method_is_refused(trained_patch_net):
    with pytest.raises(ExplainError, match="method 'saliency' does not read a layer"):
        explain(trained_patch_net, torch.zeros(1, 1, 16, 16), "saliency", layer="features.conv1")


@pytest.mark.parametrize(
    "inputs",
    [
        torch.zeros(1, 16, 16),
        torch.zeros(1, 1, 16, 16, dtype=torch.uint8),
        torch.zeros(0, 1, 16, 16),
    ],
)
def test_bad_inputs_are_refused(trained_patch_net, inputs):
    with pytest.raises(ExplainError):
        explain(trained_patch_net, inputs, "saliency")


def test_network_without_convolutions_needs_a_layer():
    mlp = create_model("mlp", num_classes=3, in_channels=1, input_size=8)
    with pytest.raises(ExplainError, match="no convolutional layer"):
        explain(mlp, torch.zeros(1, 1, 8, 8), "gradcam")


# ------------------------------------------------------------------ devices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ALL_METHODS)
def test_cuda_gives_the_cpu_maps(patch_test, method):
    torch.manual_seed(0)
    model = PatchNet().eval()
    x = preprocess(patch_test.images[:4])
    options = MethodOptions(smoothgrad_samples=4, ig_steps=8)
    on_cpu = explain(model, x, method, options=options)
    on_gpu = explain(model.cuda(), x.cuda(), method, options=options)
    assert on_gpu.maps.device.type == "cpu"
    torch.testing.assert_close(on_gpu.maps, on_cpu.maps, rtol=1e-3, atol=1e-4)


def test_smoothgrad_without_noise_is_saliency(trained_patch_net, patch_test):
    x = preprocess(patch_test.images[:3])
    quiet = MethodOptions(smoothgrad_samples=3, smoothgrad_noise=0.0)
    smooth = explain(trained_patch_net, x, "smoothgrad", options=quiet)
    plain = explain(trained_patch_net, x, "saliency")
    torch.testing.assert_close(smooth.maps, plain.maps, rtol=1e-5, atol=1e-7)
