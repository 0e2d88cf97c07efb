"""FastModule keeps every parameter, buffer and submodule as a plain attribute, in step
with nn.Module's registries through each way they change."""

from __future__ import annotations

import torch
from torch import nn

from radixlm.models.fast_module import FastModule


class Tiny(FastModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.register_buffer("scale", torch.full((3,), 2.0))
        self.register_buffer("bias", None)
        self.inner = nn.Linear(3, 3)


def _consistent(m: FastModule) -> None:
    for reg in (m._parameters, m._buffers, m._modules):
        for name, value in reg.items():
            assert m.__dict__[name] is value, name  # found without Module.__getattr__


def test_registered_values_are_plain_attributes_and_stay_current() -> None:
    m = Tiny()
    _consistent(m)
    assert "bias" in m.__dict__ and m.bias is None
    m.scale = torch.zeros(3)  # a buffer reassigned: nn.Module writes only _buffers
    assert m.scale is m._buffers["scale"] and float(m.scale.sum()) == 0.0
    m.register_buffer("scale", torch.ones(3))
    assert m.scale is m._buffers["scale"]
    m.inner = nn.Identity()  # a submodule replaced
    assert isinstance(m.inner, nn.Identity)
    m.add_module("extra", nn.ReLU())
    assert m.__dict__["extra"] is m._modules["extra"]
    m.inner = None  # a submodule cleared
    assert m.inner is None and m._modules["inner"] is None
    _consistent(m)


def test_apply_and_delete_keep_the_attributes_in_step() -> None:
    m = Tiny()
    m.to(torch.float64)  # _apply replaces the buffers by new tensors
    assert m.scale.dtype == torch.float64 and m.scale is m._buffers["scale"]
    assert m.weight.dtype == torch.float64
    _consistent(m)
    del m.scale
    assert "scale" not in m._buffers and not hasattr(m, "scale")
    m.plain = 5  # an ordinary attribute is untouched
    del m.plain
    assert not hasattr(m, "plain")
    sd = m.state_dict()  # the registries, not __dict__, drive the state dict
    assert set(sd) == {"weight", "inner.weight", "inner.bias"}
