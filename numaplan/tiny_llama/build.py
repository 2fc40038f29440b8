"""The embedded example model: a small Llama with random weights, written as an MLC model
directory (``mlc-chat-config.json``, ``tensor-cache.json``, ``params_shard_*.bin``) that
numaplan's own model definition (:mod:`numaplan.nn`) builds and runs, like any real one.

Run ``python -m numaplan.tiny_llama.build OUT_DIR [--size default|bench|tiny]
[--dtype float32|float16|q4f16_1|...] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from numaplan.model.config import MLC_CONFIG_NAME
from numaplan.model.random_model import chat_config, write_random_model

#: Named sizes. ``default`` builds and compiles in seconds and admits W in {1, 2, 4};
#: ``bench`` is bandwidth-bound (~107 M weights: 430 MB in float32, 215 MB in float16, well
#: past any last-level cache) and admits W in {1, 2, 4}; ``tiny`` is for fast unit tests.
SIZES: dict[str, dict[str, Any]] = {
    "default": dict(hidden_size=256, intermediate_size=688, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=32, num_hidden_layers=4, vocab_size=512,
                    context_window_size=512, prefill_chunk_size=128),
    "bench": dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
                  num_key_value_heads=4, head_dim=64, num_hidden_layers=8, vocab_size=8192,
                  context_window_size=1024, prefill_chunk_size=256),
    "tiny": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, num_hidden_layers=2, vocab_size=128,
                 context_window_size=128, prefill_chunk_size=32),
}
#: ``--dtype`` shorthands.
DTYPES = {"float32": "q0f32", "float16": "q0f16", "bfloat16": "q0bf16"}


def build_model_dir(out_dir: str | Path, *, size: str | dict[str, Any] = "default",
                    dtype: str = "float32", seed: int = 0, shard_cap_mb: int = 32) -> Path:
    """Write the example model as an MLC model directory (replacing an earlier one there).

    Parameters
    ----------
    out_dir
        The directory (an existing model directory there is replaced).
    size
        A :data:`SIZES` name or the ``model_config`` sizes.
    dtype
        ``float32`` / ``float16`` / ``bfloat16`` or an MLC quantization name (``q4f16_1``...).
    seed
        Weights are a function of ``(seed, tensor name)``.
    shard_cap_mb
        The shard size cap (MLC's is 32).
    """
    sizes = SIZES[size] if isinstance(size, str) else dict(size)
    quantization = DTYPES.get(dtype, dtype)
    out = Path(out_dir)
    if (out / MLC_CONFIG_NAME).exists():
        shutil.rmtree(out)
    doc = chat_config("llama", quantization, **sizes)
    return write_random_model(out, doc, seed=seed, shard_cap_bytes=shard_cap_mb << 20)


def main(argv: list[str] | None = None) -> int:
    """``python -m numaplan.tiny_llama.build OUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", default="default", choices=list(SIZES))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_model_dir(args.out_dir, size=args.size, dtype=args.dtype, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
