"""The training recipe's augmentation, checked on hand-made images."""
import torch

from orchestrator.training import augment


def _ramp(n=8):
    return torch.arange(n * 3 * 6 * 6, dtype=torch.float32).view(n, 3, 6, 6)


def test_none_returns_the_batch():
    x = _ramp()
    assert augment(x, "none", torch.Generator().manual_seed(0)) is x


def test_flip_mirrors_some_images_and_keeps_the_others():
    x = _ramp(64)
    out = augment(x, "flip", torch.Generator().manual_seed(0))
    mirrored = [bool(torch.equal(out[i], x[i].flip(2))) for i in range(64)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(64)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=False)) and 0 < sum(mirrored) < 64


def test_crop_keeps_the_size():
    assert augment(_ramp(), "crop_flip", torch.Generator().manual_seed(0)).shape == (8, 3, 6, 6)


def test_crop_shifts_by_at_most_the_padding():
    x = torch.ones(32, 1, 8, 8)
    out = augment(x, "crop_flip", torch.Generator().manual_seed(1), pad=4)
    zero_rows = (out[:, 0].sum(dim=2) == 0).sum(dim=1)  # rows that came from the zero padding
    assert int(zero_rows.max()) <= 4 and int(zero_rows.max()) > 0


def test_same_generator_seed_same_augmentation():
    x = _ramp()
    assert torch.equal(augment(x, "crop_flip", torch.Generator().manual_seed(3)),
                       augment(x, "crop_flip", torch.Generator().manual_seed(3)))
