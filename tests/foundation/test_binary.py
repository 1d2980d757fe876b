import torch

from ddnn.nn.binary import BinaryConv2d, BinaryLinear, binarize, clip_latent_weights


def test_forward_is_plus_minus_one_and_zero_maps_to_plus_one():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3, 5.0])
    assert binarize(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_gradient_passes_through_where_abs_le_one():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.9, 1.5], requires_grad=True)
    binarize(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_binary_layers_use_sign_of_weights_and_train():
    conv = BinaryConv2d(1, 2, 3, padding=1, bias=False)
    x = torch.randn(4, 1, 5, 5)
    ref = torch.nn.functional.conv2d(x, torch.where(conv.weight >= 0, 1.0, -1.0), padding=1)
    assert torch.allclose(conv(x), ref)
    lin = BinaryLinear(6, 3, bias=False)
    out = lin(torch.randn(2, 6))
    out.sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_clip_keeps_latent_weights_in_unit_range():
    lin = BinaryLinear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.mul_(10)
    clip_latent_weights(lin)
    assert lin.weight.abs().max() <= 1.0
