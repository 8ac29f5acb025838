"""PyTorch face: ``vptq.runtime.torch.QuantizedLinear``, an ``nn.Module`` drop-in for ``nn.Linear``
running the fused VPTQ CPU kernel.

This module imports without torch; torch is imported when ``QuantizedLinear`` is first
accessed (ImportError with a hint if it is not installed). Inference only: no gradients flow
through the layer (its output is created outside autograd).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from .layers import QuantizedLinear as _NumpyQuantizedLinear

__all__ = ["QuantizedLinear"]  # noqa: F822 - provided lazily by __getattr__ (needs torch)


@functools.cache
def _build_class() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError("vptq.runtime.torch.QuantizedLinear needs PyTorch: pip install 'vptq[torch]'") from e
    import numpy as np
    from torch import nn

    class QuantizedLinear(nn.Module):
        """Drop-in for ``nn.Linear(in_features, out_features, bias)`` with a VPTQ weight.

        ``forward(x)`` takes a CPU tensor (..., in_features) of float32/float16/bfloat16/float64
        and returns (..., out_features) in x's dtype (float32 math inside). Contiguous float32
        input and the output are shared with numpy without copies.
        """

        def __init__(self, qweight: Any, bias: Any = None) -> None:
            super().__init__()
            if isinstance(qweight, _NumpyQuantizedLinear):
                if bias is not None:
                    raise ValueError("bias: pass it to the numpy QuantizedLinear, not again here")
                self.inner = qweight
                #: the QuantizedWeight this layer runs (what fine-tuning trains), None when built from a plan
                self.qweight = None
            else:
                self.inner = _NumpyQuantizedLinear(qweight, bias)
                self.qweight = qweight
            self.in_features = self.inner.in_features
            self.out_features = self.inner.out_features
            b = self.inner.bias
            self.register_buffer("bias", None if b is None else torch.from_numpy(b.copy()))

        @classmethod
        def from_quantized(cls, qweight: Any, bias: Any = None) -> QuantizedLinear:
            """From a ``vptq.QuantizedWeight`` and an optional bias (tensor or array, [out_features])."""
            return cls(qweight, bias)

        @classmethod
        def from_linear(cls, linear: nn.Linear, qweight: Any) -> QuantizedLinear:
            """Replacement for ``linear`` whose weight was quantized into ``qweight`` (a
            ``vptq.QuantizedWeight`` of the same shape); takes the Linear's bias."""
            if not isinstance(linear, nn.Linear):
                raise TypeError(f"linear: expected torch.nn.Linear, got {type(linear).__name__}")
            shape = (int(qweight.out_features), int(qweight.in_features))
            if shape != (linear.out_features, linear.in_features):
                raise ValueError(f"qweight: expected shape {(linear.out_features, linear.in_features)} "
                                 f"(out, in) of the Linear, got {shape}")
            bias = None if linear.bias is None else linear.bias.detach().float().cpu().numpy()
            return cls(qweight, bias)

        @classmethod
        def from_state_dict(cls, tensors: Mapping[str, Any], layer_config: Mapping[str, Any]) -> QuantizedLinear:
            """From the official tensors and ``config_for_layers`` entry of one layer."""
            return cls(_NumpyQuantizedLinear.from_state_dict(tensors, layer_config))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inner = self.inner
            # Fast path (decode: one call per layer per token): float32 CPU tensor, contiguous,
            # no autograd history -> a numpy view in, a tensor sharing the kernel's output out.
            if type(x) is torch.Tensor and x.dtype is torch.float32 and not x.requires_grad \
                    and x.device.type == "cpu" and x.is_contiguous() and x.dim() >= 1 \
                    and x.shape[-1] == inner._N and x.numel() > 0:
                y = inner._plan.forward(x.numpy().reshape(-1, inner._N), None)
                return torch.from_numpy(y.reshape((*x.shape[:-1], inner._M)))
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
            if x.device.type != "cpu":
                raise ValueError(f"x: expected a CPU tensor, got device {x.device}")
            if not x.is_floating_point():
                raise TypeError(f"x: expected a floating dtype, got {x.dtype}")
            dtype = x.dtype
            xf = x.detach()
            if dtype != torch.float32:
                xf = xf.to(torch.float32)
            xf = xf.contiguous()
            y = torch.from_numpy(np.asarray(inner(xf.numpy())))
            return y if dtype == torch.float32 else y.to(dtype)

        def extra_repr(self) -> str:
            L = self.inner.layout
            return (f"in_features={self.in_features}, out_features={self.out_features}, "
                    f"bias={self.bias is not None}, v={L['v']}, k1={L['k1']}, k2={L['k2']}")

    return QuantizedLinear


def __getattr__(name: str) -> Any:
    if name == "QuantizedLinear":
        return _build_class()
    raise AttributeError(f"module 'vptq.runtime.torch' has no attribute {name!r}")
