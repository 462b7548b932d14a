"""``compile=true``: ``torch.compile`` of the encoder and decoder (fewer kernel launches on a GPU)."""

from __future__ import annotations

import torch

from vae_lab.errors import ConfigError

#: torch.compile's modes (inductor): ``compile=reduce-overhead`` adds CUDA graphs on a GPU (a no-op on the CPU).
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_networks(model: torch.nn.Module, setting: bool | str) -> None:
    """Compile ``model.encoder`` and ``model.decoder`` in place (``nn.Module.compile``), so that
    parameter names, and therefore checkpoints, stay those of the uncompiled model.

    ``setting``: false (nothing), true (the default backend, inductor), one of inductor's
    :data:`MODES` (``reduce-overhead``: CUDA graphs, for a GPU where a small model's step is bound
    by kernel launches) or the name of a ``torch.compile`` backend (``aot_eager`` traces the same
    graphs without generating code: a quick check on the CPU). On this 2-core CPU, inductor spent
    ~40 s compiling the default model before its first step, then ran steps at the uncompiled
    speed; the gain is on GPUs.
    """
    if setting is False or setting is None:
        return
    if setting is True or setting in MODES:
        options = {"backend": "inductor", "mode": None if setting is True else str(setting)}
    else:
        import torch._dynamo

        if str(setting) not in torch._dynamo.list_backends(exclude_tags=()):
            raise ConfigError(
                f"compile={setting!r} is neither true/false, a torch.compile mode ({', '.join(MODES)}) nor a "
                f"backend; use compile=true, or one of: {', '.join(torch._dynamo.list_backends(exclude_tags=()))}."
            )
        options = {"backend": str(setting)}
    model.encoder.compile(**options)
    model.decoder.compile(**options)
