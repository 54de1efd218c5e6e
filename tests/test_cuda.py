"""CUDA paths: mixed-precision channels_last training and GPU inference (skipped without a CUDA GPU)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]


def test_amp_channels_last_training_on_cuda(tmp_path, synth_data):
    from mde.train.checkpoint import load_model
    from mde.train.config import TrainConfig
    from mde.train.trainer import train

    out = tmp_path / "run"
    result = train(TrainConfig(data=str(synth_data), out=str(out), backbone="resnet18", image_size=64,
                               batch_size=4, epochs=1, pretrained=False, device="cuda", amp=True,
                               channels_last=True, workers=0))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r["train_loss"]) for r in records)
    model, _ = load_model(out / "best.pt", "cpu")  # a CUDA-trained checkpoint loads on the CPU
    assert result["best"]["rmse"] > 0 and next(model.parameters()).device.type == "cpu"


def test_cuda_inference_matches_cpu(tiny_checkpoint, synth_data):
    from mde.data.readers import dataset_max_depth, open_dataset
    from mde.train.checkpoint import load_model
    from mde.train.evaluate import evaluate_model

    val = open_dataset(synth_data, "val")
    scores = {}
    for device in ("cpu", "cuda"):
        model, state = load_model(tiny_checkpoint, device)
        scores[device] = evaluate_model(model, val, 64, model.args.max_depth, device,
                                        data_range=dataset_max_depth(synth_data))
    assert scores["cuda"]["rmse"] == pytest.approx(scores["cpu"]["rmse"], abs=1e-3)


def test_decoder_training_speed_on_cuda():
    """bench_train.cuda_decoder_speed runs both decoders' training steps on the GPU."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_train

    benchmark = torch.backends.cudnn.benchmark
    out = bench_train.cuda_decoder_speed(True, ("report", "unet"))
    assert torch.backends.cudnn.benchmark == benchmark  # as it was: later tests compare outputs
    for backbone, size, batch in bench_train.CUDA_QUICK_SHAPES:
        rates = out[f"{backbone}_{size}px_batch{batch}"]
        assert rates["report"]["train_images_per_s"] > 0 and rates["unet_vs_report"] > 0
