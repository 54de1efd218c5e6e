"""Export time and sizes: checkpoint -> model.onnx + model.fp16.onnx, resnet50 at 224x224.

`python benchmarks/bench_export.py [--quick] [--decoder D]` (quick: resnet18 at 64x64; the decoder: `mde train`'s
default unless named). Random weights: export time and size do not depend on the weight values. The figures
are one JSON object on stdout; the lines said on the way go to stderr.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from cli_common import Parser, decoder_choices, default_decoder, run_main


def run(quick: bool = False, decoder: str | None = None) -> dict:
    """Export a fresh checkpoint to FP32 and FP16 ONNX; return seconds, sizes and errors vs PyTorch."""
    import torch

    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.train.checkpoint import save_untrained
    from mde.train.model import ModelArgs

    backbone, size = ("resnet18", 64) if quick else ("resnet50", 224)
    with tempfile.TemporaryDirectory(prefix="mde-bench-export-") as tmp:
        ckpt = Path(tmp) / "model.pt"
        save_untrained(ckpt, ModelArgs(backbone=backbone, image_size=size, max_depth=20.0,
                                       decoder=decoder or default_decoder()))
        started = time.perf_counter()
        artifacts = export_checkpoint(
            ExportConfig(
                checkpoint=ckpt,
                out=Path(tmp) / "export",
                precisions=("fp32", "fp16"),
                progress=False,
            )
        )
        total = time.perf_counter() - started
    result = {
        "backbone": backbone,
        "decoder": decoder or default_decoder(),
        "image_size": size,
        "torch_threads": torch.get_num_threads(),
        "total_seconds": round(total, 2),
    }
    for a in artifacts:
        result[a.precision] = {
            "seconds": round(a.seconds, 2),
            "size_mib": round(a.size_bytes / 2**20, 1),
            "p99_abs_diff_m": a.p99_abs_diff,
            "max_abs_diff_m": a.max_abs_diff,
            "p99_over_range": a.p99_over_range,
        }
    print(  # stderr: stdout is the JSON alone (`| jq`)
        f"export {backbone} + {result['decoder']} decoder {size}x{size}: total {total:.1f} s (includes checkpoint "
        "load, golden run, checks)", file=sys.stderr
    )
    for a in artifacts:
        print(
            f"  {a.precision}: {a.seconds:6.1f} s  {a.size_bytes / 2**20:7.1f} MiB  "
            f"p99 |diff| {a.p99_abs_diff:.2e} m  max {a.max_abs_diff:.2e} m", file=sys.stderr
        )
    return result


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64x64")
    parser.add_argument("--decoder", choices=decoder_choices(), default=None, help="default: mde train's")
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.decoder), indent=2))


if __name__ == "__main__":
    run_main(main)
