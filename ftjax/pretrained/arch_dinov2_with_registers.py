"""DINOv2 with registers checkpoints (Hugging Face `Dinov2WithRegistersModel` keys).

facebook/dinov2-with-registers-*: the DINOv2 layout (`arch_dinov2.py`, which holds the functions)
plus `embeddings.register_tokens`, `num_register_tokens` learned tokens inserted after CLS once
the position embeddings are added and left out of the classifier's patch mean. Its position
embeddings resample with antialiasing, as transformers' `Dinov2WithRegistersEmbeddings` does.
Keys of the task class sit under `dinov2_with_registers.`.
"""

from __future__ import annotations

from ftjax.pretrained.arch_dinov2 import architecture

__all__ = ["ARCH"]

ARCH = architecture(registers=True)
