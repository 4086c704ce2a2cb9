"""ShortConvolution carried over chunks and single steps equals one causal nn.Conv1d over the whole sequence."""
import pytest
import torch
import torch.nn.functional as F

from edgelin.models.layers.conv import ShortConvolution


@pytest.mark.parametrize("kernel", [2, 4])
def test_chunks_and_steps_equal_conv1d(kernel):
    conv = ShortConvolution(6, kernel, bias=True)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 11, 6)
    want = F.silu(F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=kernel - 1, groups=6)[..., :11]).transpose(1, 2)
    state, outs = torch.zeros(conv.state_shape(2)), []
    with torch.no_grad():
        for chunk in (x[:, :5], *x[:, 5:].split(1, dim=1)):
            y, state = conv(chunk, state)
            outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), want)
    torch.testing.assert_close(state, x[:, -(kernel - 1):])  # channel-last, oldest input first
