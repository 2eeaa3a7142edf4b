"""Kernels with hand-written gradients, and the backend options they need.

Model files hold architectures only; a layer whose fast form needs a custom VJP or an XLA flag
gets it from here. Not for: Flax modules (ftjax.models) or compiling steps (ftjax.compile).
"""

from ftjax.ops.depthwise import CPU_COMPILER_OPTIONS, depthwise_conv, same_padding

__all__ = ["CPU_COMPILER_OPTIONS", "depthwise_conv", "same_padding"]
