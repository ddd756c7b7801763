"""What the network sees: augmentation of training batches, their statistics and padding."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import AugmentConfig
from cnnlab.data import transforms as T
from cnnlab.engine.batches import BatchPipeline, epoch_draws
from tests.engine.synthetic import patch_images

MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's, whose background is black


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("on_device", [True, False])
def test_crop_pads_with_black_pixels_as_if_the_image_were_padded(normalize, on_device):
    # The textbook recipe pads the uint8 image and then normalizes; padding the normalized
    # batch with 0 gave a frame of the mean grey (0.286) around Fashion-MNIST's black.
    x, _ = patch_images(6, seed=0)
    mean, std = (MEAN, STD) if normalize else ((), ())
    pipe = BatchPipeline(mean=mean, std=std, augment=AugmentConfig(crop_padding=3))
    pipe = pipe.to("cpu") if on_device else pipe
    oy, ox = torch.tensor([0, 6, 3, 0, 6, 1]), torch.tensor([0, 6, 3, 6, 0, 5])
    got = pipe(x, train=True, draws=torch.stack([oy, ox]))
    padded_first = T.crop_at(F.pad(x, (3,) * 4), oy, ox, (28, 28))
    want = T.normalize(padded_first, MEAN, STD) if normalize else T.to_float(padded_first)
    assert torch.equal(got, want)
    assert got[0, 0, :3].eq(want.min()).all()  # the top rows of the first crop are padding


def test_augmentation_only_for_training_batches():
    x, _ = patch_images(8, seed=1)
    pipe = BatchPipeline(mean=MEAN, std=STD, augment=AugmentConfig(crop_padding=4, hflip=1.0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(pipe(x, g), T.normalize(x, MEAN, STD))
    assert not torch.equal(pipe(x, g, train=True), T.normalize(x, MEAN, STD))


def test_draws_are_per_sample_per_epoch_seeded_and_uniform():
    # 20,000 draws: flip shares within 4 standard errors of p, crop offsets uniform over
    # 0..2*padding (chi-square with 8 degrees of freedom, far below its 0.999 quantile 26.1).
    pipe = BatchPipeline(
        mean=(), std=(), augment=AugmentConfig(crop_padding=4, hflip=0.5, vflip=0.3)
    )
    n = 20_000
    epoch0 = torch.cat(epoch_draws(pipe, [5], 0, n, 256, 0, "cpu"), 1)
    assert torch.equal(epoch0, torch.cat(epoch_draws(pipe, [5], 0, n, 256, 0, "cpu"), 1))
    epoch1 = torch.cat(epoch_draws(pipe, [5], 1, n, 256, 0, "cpu"), 1)
    other_seed = torch.cat(epoch_draws(pipe, [6], 0, n, 256, 0, "cpu"), 1)
    for other in (epoch1, other_seed):  # agreement only by chance: 1/9 for offsets
        assert (other[:2] == epoch0[:2]).float().mean() < 0.15
    for row in epoch0[:2]:
        counts = torch.bincount(row, minlength=9).double()
        assert len(counts) == 9
        expected = n / 9
        assert ((counts - expected) ** 2 / expected).sum() < 26.1
    for row, p in ((epoch0[2], 0.5), (epoch0[3], 0.3)):
        assert abs(row.double().mean() - p) < 4 * (p * (1 - p) / n) ** 0.5
    # two images of one batch get their own crops
    first = epoch_draws(pipe, [5], 0, n, 256, 0, "cpu")[0]
    assert len(set(zip(first[0].tolist(), first[1].tolist()))) > 60
