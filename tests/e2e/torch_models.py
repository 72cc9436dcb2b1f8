"""Small PyTorch modules in the styles of real networks, for the torch.onnx export tests.

Each entry of TORCH_MODELS builds (module in eval mode, example inputs, dynamic axes) from a
fixed seed. Batch-norm statistics are randomized so that folding or running them matters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TorchCase:
    """A module to export with example inputs, and inputs of other dynamic sizes to run it on."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]  # traced by the exporter
    run_inputs: dict[str, torch.Tensor]  # another batch (and sequence) size: kiln compiles these
    dynamic_axes: dict[str, dict[int, str]]
    # Where the TorchScript exporter bakes a traced size into the graph: inputs that keep it.
    legacy_run_inputs: dict[str, torch.Tensor] | None = None


def randomize_norms(module: nn.Module) -> None:
    """Give every batch norm non-trivial affine parameters and running statistics."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = 1.0 + 0.1 * torch.randn(c)
            m.bias.data = 0.1 * torch.randn(c)
            m.running_mean = 0.1 * torch.randn(c)
            m.running_var = 0.5 + torch.rand(c)


def _finish(module: nn.Module) -> nn.Module:
    randomize_norms(module)
    return module.eval()


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm, projection shortcut when needed."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetLike(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                    BasicBlock(32, 32, 1))
        self.norm = nn.BatchNorm2d(32)  # pre-activation style: follows an Add, not a Conv
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.layers(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type) -> None:
        super().__init__()
        mid = cin * expand
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), act(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetLike(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
            InvertedResidual(16, 16, 1, 1, nn.ReLU6),
            InvertedResidual(16, 24, 2, 4, nn.ReLU6),
            InvertedResidual(24, 24, 1, 4, nn.Hardswish),
            nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish(),
        )
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.Hardswish(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class TextEncoder(nn.Module):
    """Embeddings with learned positions, two post-norm encoder layers, masked mean pooling."""

    def __init__(self, vocab: int = 100, max_len: int = 32, d_model: int = 64) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, 4, dim_feedforward=128, dropout=0.0,
                                       activation="gelu", batch_first=True)
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        padding = attention_mask == 0
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        x = self.norm(x)
        weights = attention_mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class ConvBnSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


class CspBlock(nn.Module):
    """YOLO-style CSP block: chunk the channels, transform one half, concatenate."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.inner = ConvBnSiLU(c // 2, c // 2)
        self.out = ConvBnSiLU(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return self.out(torch.cat([a, self.inner(b)], dim=1))


class Detector(nn.Module):
    """Two-scale detector: downsampling backbone, upsampled fusion, anchor-grid heads."""

    anchors, classes = 3, 4

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnSiLU(3, 16, 3, 2)
        self.down1 = nn.Sequential(ConvBnSiLU(16, 32, 3, 2), CspBlock(32))
        self.down2 = nn.Sequential(ConvBnSiLU(32, 32, 3, 2), CspBlock(32))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = ConvBnSiLU(64, 32, 1)
        self.lateral = ConvBnSiLU(16, 16, 1)
        self.fine = ConvBnSiLU(48, 32, 3)
        outs = self.anchors * (self.classes + 5)
        self.head_coarse = nn.Conv2d(32, outs, 1)
        self.head_fine = nn.Conv2d(32, outs, 1)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.view(b, self.anchors, self.classes + 5, h, w).permute(0, 1, 3, 4, 2)
        xy, wh, scores = torch.split(x, [2, 2, self.classes + 1], dim=-1)
        return torch.cat([xy.sigmoid() * 2 - 0.5, wh.sigmoid() ** 2 * 4, scores.sigmoid()], -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s1 = self.stem(x)
        s2 = self.down1(s1)
        s3 = self.down2(s2)
        p2 = self.fuse(torch.cat([self.up(s3), s2], dim=1))
        p1 = F.interpolate(p2, scale_factor=2.0, mode="bilinear", align_corners=False)
        p1 = self.fine(torch.cat([p1, self.lateral(s1)], dim=1))
        return self._decode(self.head_coarse(p2)), self._decode(self.head_fine(p1))


class Crnn(nn.Module):
    """CRNN-style OCR without the RNN: convs pool to height 1, columns become time steps."""

    def __init__(self, classes: int = 20) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 48, 3, 1, 1), nn.BatchNorm2d(48), nn.ReLU(),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(48, 48, (2, 1)), nn.ReLU(),
        )
        self.fc = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).squeeze(2)  # [B, C, T]
        return F.log_softmax(self.fc(x.permute(2, 0, 1)), dim=-1)  # [T, B, classes]


class SignalClassifier(nn.Module):
    """1-D conv net over a waveform or byte signal, with global average pooling over time."""

    def __init__(self, channels: int = 2, classes: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.BatchNorm1d(channels),  # input normalization: a BatchNormalization node remains
            nn.Conv1d(channels, 16, 7, 2, 3), nn.BatchNorm1d(16), nn.GELU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, 1, 2), nn.BatchNorm1d(32), nn.GELU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 32, 3, 1, 2, dilation=2), nn.GELU(),
        )
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=-1))


def _images(channels: int, height: int, width: int) -> tuple[dict, dict]:
    return ({"image": torch.randn(2, channels, height, width)},
            {"image": torch.randn(3, channels, height, width)})


def _text(batch: int, sequence: int) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, sequence, dtype=torch.int64)
    mask[-1, sequence * 2 // 3:] = 0  # the last sequence is padded
    return {"input_ids": torch.randint(0, 100, (batch, sequence)), "attention_mask": mask}


BATCH = {0: "batch"}


def resnet() -> TorchCase:
    torch.manual_seed(0)
    return TorchCase(_finish(ResNetLike()), *_images(3, 32, 32), {"image": BATCH})


def mobilenet() -> TorchCase:
    torch.manual_seed(1)
    return TorchCase(_finish(MobileNetLike()), *_images(3, 32, 32), {"image": BATCH})


def transformer() -> TorchCase:
    torch.manual_seed(2)
    axes = {0: "batch", 1: "sequence"}
    # The TorchScript exporter bakes the traced sequence length into nn.MultiheadAttention's
    # reshapes (onnxruntime fails as well at another length); only the batch may change there.
    return TorchCase(_finish(TextEncoder()), _text(2, 12), _text(3, 9),
                     {"input_ids": axes, "attention_mask": axes}, _text(3, 12))


def detector() -> TorchCase:
    torch.manual_seed(3)
    return TorchCase(_finish(Detector()), *_images(3, 32, 32), {"image": BATCH})


def crnn() -> TorchCase:
    torch.manual_seed(4)
    return TorchCase(_finish(Crnn()), *_images(1, 16, 40), {"image": BATCH})


def signal() -> TorchCase:
    torch.manual_seed(5)
    return TorchCase(_finish(SignalClassifier()), {"signal": torch.randn(2, 2, 256)},
                     {"signal": torch.randn(3, 2, 256)}, {"signal": BATCH})


TORCH_MODELS: dict[str, Callable[[], TorchCase]] = {
    f.__name__: f for f in (resnet, mobilenet, transformer, detector, crnn, signal)
}
