"""From-scratch reference operations for learners.

Plain implementations of what a CNN's layers compute, each tested equal to
PyTorch's: convolution (one channel, many channels, 1x1 as a matrix product,
im2col), pooling, batch normalization, dropout, the edge-kernel exercise, and
the formulas for output sizes and operation counts. ``docs/learn.md`` walks
through them.
"""

from cnnlab.scratch.batchnorm import BatchNorm, batch_norm
from cnnlab.scratch.conv import conv1x1, conv2d, conv2d_im2col, corr2d, im2col, pad2d
from cnnlab.scratch.dropout import dropout
from cnnlab.scratch.edge import EdgeFit, learn_edge_kernel, stripe_image
from cnnlab.scratch.formulas import (
    OpCount,
    conv_ops,
    conv_output_size,
    pool_ops,
    pool_output_size,
)
from cnnlab.scratch.pool import avg_pool2d, max_pool2d

__all__ = [
    "BatchNorm",
    "EdgeFit",
    "OpCount",
    "avg_pool2d",
    "batch_norm",
    "conv1x1",
    "conv2d",
    "conv2d_im2col",
    "conv_ops",
    "conv_output_size",
    "corr2d",
    "dropout",
    "im2col",
    "learn_edge_kernel",
    "max_pool2d",
    "pad2d",
    "pool_ops",
    "pool_output_size",
    "stripe_image",
]
