"""The opt-in int8 head of the crossing path (``head_dtype="int8"``, ``--head-precision int8``).

Built when a model loads, from the artifact's float32 head program (no format change):

1. :func:`eager_head` reads the program's layers back into an eager float32 module (a
   stack of Linear/ReLU/Dropout, or a DCN-v2 cross head: float32 cross layers, then such
   a stack) and checks that it computes what the program computes, on probe rows;
2. :func:`quantize_head` swaps each ``nn.Linear`` for an :class:`Int8Linear`: weights int8
   per output unit (symmetric, scale ``max|w|/127``), activations int8 per row (scale
   ``max|x_row|/127``, computed on every call), int8 x int8 -> int32 products
   (``torch._int_mm``, oneDNN: VNNI where the CPU has it), then ``acc * s_row * s_unit +
   bias`` in float32. DCN-v2's cross layers are not ``nn.Linear`` and stay float32.

Why not ``torch.ao.quantization.quantize_dynamic``: its dynamic Linear takes one activation
scale from the whole input, so a row's score would depend on the other rows of the call:
on the other requests of the batch (recserve.engine.batch_plan promises it never does) and on
the other candidates of the same request. Measured on the ML-100k DeepFM (1000 rows vs
the same 47 alone): logits moved by up to 0.027. With one scale per row, the integer
sums are exact whatever the row count and the rest is elementwise, so a row's logit
depends on that row alone, bit for bit (tests/python/test_crossing_precision.py). It is
about as fast (docs/performance.md), and ``torch.ao.quantization`` is deprecated in this
PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from .programs import torchscript_deprecation_silenced

# Layers an int8 head may be made of (the program's original class names); Dropout is the
# identity in eval mode.
_ACTIVATIONS = {"ReLU": nn.ReLU}
_IDENTITIES = ("Dropout", "Identity")
# Largest |difference| (relative to the largest logit) between the rebuilt float32 head and
# the program on probe rows: the same ops, so in practice 0.
_MIRROR_TOLERANCE = 1e-5


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per output unit) and int8 activations (per row).

    ``nonnegative``: the input is a ReLU's output, so ``max(x_row)`` is ``max|x_row|``
    (saves a pass over the input); ``relu``: a ReLU follows, applied in place.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        nonnegative: bool = False,
        relu: bool = False,
    ) -> None:
        super().__init__()
        w = weight.detach().to(torch.float32)  # [N, K]
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))  # [N]
        self.register_buffer(
            "weight_t", torch.round(w / scale[:, None]).to(torch.int8).t().contiguous()
        )  # [K, N], the layout torch._int_mm reads
        self.register_buffer("weight_scale", scale)
        b = torch.zeros(w.shape[0]) if bias is None else bias.detach().to(torch.float32)
        self.register_buffer("bias", b.clone())
        self.nonnegative = nonnegative
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [M, K] float32 -> [M, N] float32
        amax = (
            x.amax(dim=1, keepdim=True) if self.nonnegative else x.abs().amax(dim=1, keepdim=True)
        )
        # A row of zeros (the batch plan's padding) would get scale 0; 1e-30 keeps x / scale
        # finite and the row's int8 values 0.
        scale = amax.clamp_min(1e-30).div_(127.0)  # [M, 1]
        q = torch.div(x, scale).round_().to(torch.int8)  # |q| <= 127
        acc = torch._int_mm(q, self.weight_t)  # [M, N] int32, exact
        # One rounding per op, elementwise: the same bits in any row count.
        out = acc.to(torch.float32).mul_(scale).mul_(self.weight_scale).add_(self.bias)
        return out.clamp_min_(0.0) if self.relu else out


class CrossHead(nn.Module):
    """The DCN-v2 head (recserve.training.models.dcnv2.CrossHead, the same ops): the cross
    layers after the first ``x = x0 * (x W^T + b) + x``, then ``mlp`` on ``x``."""

    def __init__(self, kernels: list[torch.Tensor], biases: list[torch.Tensor], mlp: nn.Module):
        super().__init__()
        self.kernels = nn.ParameterList(nn.Parameter(k.detach().clone(), False) for k in kernels)
        self.bias = nn.ParameterList(nn.Parameter(b.detach().clone(), False) for b in biases)
        self.mlp = mlp

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        x = x1
        for kernel, bias in zip(self.kernels, self.bias, strict=True):
            x = torch.addcmul(x, x0, torch.addmm(bias, x, kernel.t()))
        return self.mlp(x)


def _kind(module: nn.Module) -> str:
    """The class a (scripted or eager) module was made from."""
    return getattr(module, "original_name", type(module).__name__)


def _eager_stack(program: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for name, child in program.named_children():
        kind = _kind(child)
        if kind == "Linear":
            weight = child.weight.detach()
            bias = child.bias
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias.detach())
            layers.append(linear)
        elif kind in _ACTIVATIONS:
            layers.append(_ACTIVATIONS[kind]())
        elif kind == "Sequential":
            layers += list(_eager_stack(child))
        elif kind not in _IDENTITIES:
            raise ValueError(
                f"the int8 head takes Linear, ReLU and Dropout layers; layer {name!r} is a {kind}"
            )
    if not layers:
        raise ValueError("the head program has no layers")
    return nn.Sequential(*layers).eval()


def eager_head(program: nn.Module) -> nn.Module:
    """An eager float32 module computing what the head ``program`` computes (TorchScript
    or eager): a ``Sequential`` of Linear/ReLU/Dropout or a DCN-v2 ``CrossHead``.
    ``ValueError`` for any other structure, or when the rebuilt module disagrees with the
    program on probe rows (a custom ``forward``)."""
    kind = _kind(program)
    inputs: int
    if kind == "Sequential":
        module: nn.Module = _eager_stack(program)
        inputs = 1
    elif kind == "CrossHead":
        kernels = [p.detach() for p in program.kernels.parameters()]
        biases = [p.detach() for p in program.bias.parameters()]
        module = CrossHead(kernels, biases, _eager_stack(program.mlp)).eval()
        inputs = 2
    else:
        raise ValueError(
            f"the int8 head needs a Sequential of Linear/ReLU/Dropout layers or a DCN-v2 "
            f"CrossHead; this head is a {kind}"
        )
    _check_mirror(program, module, inputs)
    return module


def _first_width(module: nn.Module) -> int:
    if isinstance(module, CrossHead):
        return module.mlp[0].in_features if not module.kernels else module.kernels[0].shape[1]
    first = module[0]
    if isinstance(first, nn.Linear):
        return first.in_features
    raise ValueError("the head program does not start with a Linear layer")


def _check_mirror(program: nn.Module, module: nn.Module, inputs: int) -> None:
    generator = torch.Generator().manual_seed(0)
    probe = [torch.randn(96, _first_width(module), generator=generator) for _ in range(inputs)]
    with torch.inference_mode():
        want = program(*probe).reshape(-1)
        got = module(*probe).reshape(-1)
    if want.shape != got.shape:
        raise ValueError(
            f"the rebuilt head gives {got.shape[0]} values per row batch, not {want.shape[0]}"
        )
    scale = float(want.abs().max().clamp_min(1.0))
    if not torch.allclose(got, want, rtol=0.0, atol=_MIRROR_TOLERANCE * scale):
        raise ValueError(
            "the head program does not compute what its layers suggest (a custom forward?); "
            "it cannot be served in int8"
        )


def _swap_linears(module: nn.Module, nonnegative: bool) -> nn.Module:
    """``module`` with each Linear an :class:`Int8Linear` (a ReLU after it fused in)."""
    if isinstance(module, CrossHead):
        module.mlp = _swap_linears(module.mlp, nonnegative=False)  # the cross output is signed
        return module
    layers: list[nn.Module] = []
    for layer in module:
        if isinstance(layer, nn.ReLU) and layers and isinstance(layers[-1], Int8Linear):
            layers[-1].relu = True
        elif isinstance(layer, nn.Linear):
            layers.append(Int8Linear(layer.weight, layer.bias, nonnegative))
        else:
            layers.append(layer)
        nonnegative = isinstance(layer, nn.ReLU)
    return nn.Sequential(*layers)


def check_int8_support() -> None:
    """``RuntimeError`` unless int8 products run on oneDNN here: without it
    ``torch._int_mm`` is a scalar loop (measured about 100x slower than oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError(
            "the int8 head needs PyTorch built with oneDNN (torch.backends.mkldnn is not "
            "available); serve with --head-precision fp32 or bf16"
        )
    if not torch.backends.mkldnn.enabled:
        raise RuntimeError(
            "the int8 head needs oneDNN, which is disabled (torch.backends.mkldnn.enabled is "
            "False); serve with --head-precision fp32 or bf16"
        )


def quantize_head(program: nn.Module, nonnegative_input: bool = False) -> torch.jit.ScriptModule:
    """The int8 program of a float32 head ``program`` (see the module), as TorchScript
    (fewer interpreter overheads than eager). ``nonnegative_input``: the head's first
    input is a ReLU's output (DeepFM, Wide&Deep); it must then never be negative, or the
    value wraps around in int8. The program itself is not changed."""
    check_int8_support()
    module = _swap_linears(eager_head(program), nonnegative_input).eval()
    with torchscript_deprecation_silenced():
        return torch.jit.script(module)
