"""Shape descriptions of the layers our kernels implement."""

from __future__ import annotations

from dataclasses import dataclass, replace


def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution in NCHW / OIHW. ``padding`` is (top, left, bottom, right) as in Relax."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels and out_channels ({self})")
        if self.out_height <= 0 or self.out_width <= 0:
            raise ValueError(f"convolution has an empty output: {self}")

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def kind(self) -> str:
        if self.groups == 1:
            return "conv2d"
        return "depthwise_conv2d" if self.is_depthwise else "grouped_conv2d"

    @property
    def out_height(self) -> int:
        kh = (self.kernel[0] - 1) * self.dilation[0] + 1
        return (self.height + self.padding[0] + self.padding[2] - kh) // self.strides[0] + 1

    @property
    def out_width(self) -> int:
        kw = (self.kernel[1] - 1) * self.dilation[1] + 1
        return (self.width + self.padding[1] + self.padding[3] - kw) // self.strides[1] + 1

    @property
    def reduction(self) -> int:
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def macs(self) -> int:
        return self.batch * self.out_channels * self.out_height * self.out_width * self.reduction

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)


@dataclass(frozen=True)
class DenseSpec:
    """``y[N, O] = x[N, K] @ W[O, K]^T``."""

    batch: int
    in_features: int
    out_features: int

    kind = "dense"

    @property
    def reduction(self) -> int:
        return self.in_features

    @property
    def macs(self) -> int:
        return self.batch * self.in_features * self.out_features

    @property
    def out_channels(self) -> int:
        return self.out_features

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.batch, self.out_features)


def group_spec(spec: "ConvSpec | DenseSpec", size: int) -> "ConvSpec | DenseSpec":
    """The spec of ``size`` output channels of a layer (a channel group runs as its own conv/dense)."""
    if isinstance(spec, DenseSpec):
        return replace(spec, out_features=size)
    return replace(spec, out_channels=size)
