"""Dense-prediction and signal models: a YOLOv8n-style detector at 640x640, a U-Net-style
segmenter at 256x256 and a 1-D conv audio classifier over one second of 16 kHz audio."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .convnets import conv_bn


def cbs(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv + BatchNorm + SiLU, YOLOv8's basic layer."""
    return conv_bn(cin, cout, k, stride, act=nn.SiLU)


class C2f(nn.Module):
    """YOLOv8's CSP block: split, n bottlenecks each feeding the next, concat all, 1x1."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1, self.cv2 = cbs(cin, 2 * self.c), cbs((2 + n) * self.c, cout)
        self.m = nn.ModuleList(nn.Sequential(cbs(self.c, self.c, 3), cbs(self.c, self.c, 3))
                               for _ in range(n))
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            ys.append(ys[-1] + m(ys[-1]) if self.shortcut else m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = cbs(cin, cin // 2), cbs(cin * 2, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(F.max_pool2d(ys[-1], 5, 1, 2))
        return self.cv2(torch.cat(ys, 1))


class Detect(nn.Module):
    """Decoupled head per scale (box: 4 x 16 distribution bins, class: 80 scores), DFL decode."""

    def __init__(self, channels: list[int], classes: int = 80, bins: int = 16) -> None:
        super().__init__()
        self.bins = bins
        box, cls = max(16, channels[0] // 4, 4 * bins), max(channels[0], min(classes, 100))
        self.box = nn.ModuleList(nn.Sequential(cbs(c, box, 3), cbs(box, box, 3),
                                               nn.Conv2d(box, 4 * bins, 1)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(cbs(c, cls, 3), cbs(cls, cls, 3),
                                               nn.Conv2d(cls, classes, 1)) for c in channels)
        self.register_buffer("proj", torch.arange(bins, dtype=torch.float32))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        outs = [torch.cat([b(x), c(x)], 1).flatten(2)
                for x, b, c in zip(features, self.box, self.cls, strict=True)]
        y = torch.cat(outs, 2)  # [B, 4 * bins + classes, anchors]
        box, cls = y[:, :4 * self.bins], y[:, 4 * self.bins:]
        b, _, a = box.shape
        dist = F.softmax(box.view(b, 4, self.bins, a), 2).transpose(2, 3) @ self.proj
        return torch.cat([dist, cls.sigmoid()], 1)  # [B, 4 + classes, anchors]


class YoloV8n(nn.Module):
    """YOLOv8n (width 0.25, depth 0.33) backbone, PAN neck and head at 640x640."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Sequential(cbs(3, 16, 3, 2), cbs(16, 32, 3, 2), C2f(32, 32, 1, True),
                                cbs(32, 64, 3, 2), C2f(64, 64, 2, True))  # P3, stride 8
        self.b2 = nn.Sequential(cbs(64, 128, 3, 2), C2f(128, 128, 2, True))  # P4
        self.b3 = nn.Sequential(cbs(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256))
        self.up4, self.up3 = C2f(384, 128, 1, False), C2f(192, 64, 1, False)
        self.down3, self.pan4 = cbs(64, 64, 3, 2), C2f(192, 128, 1, False)
        self.down4, self.pan5 = cbs(128, 128, 3, 2), C2f(384, 256, 1, False)
        self.detect = Detect([64, 128, 256])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b1(x)
        p4 = self.b2(p3)
        p5 = self.b3(p4)
        n4 = self.up4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        n3 = self.up3(torch.cat([F.interpolate(n4, scale_factor=2.0, mode="nearest"), p3], 1))
        n4 = self.pan4(torch.cat([self.down3(n3), n4], 1))
        n5 = self.pan5(torch.cat([self.down4(n4), p5], 1))
        return self.detect([n3, n4, n5])


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout, 3), conv_bn(cout, cout, 3))


class UNet(nn.Module):
    """U-Net: 4 max-pool downsamplings from 32 channels, ConvTranspose 2x2 upsampling with
    skip concatenation (the top level upsamples bilinearly instead), 1x1 head to 2 classes."""

    def __init__(self, base: int = 32, classes: int = 2) -> None:
        super().__init__()
        widths = [base * 2 ** i for i in range(5)]
        self.downs = nn.ModuleList([double_conv(3, widths[0])] + [
            double_conv(widths[i], widths[i + 1]) for i in range(4)])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2)
                                 for i in range(1, 4))
        self.decs = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in range(1, 4))
        self.top_reduce = conv_bn(widths[1], widths[0])
        self.top = double_conv(2 * widths[0], widths[0])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.downs):
            x = down(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(reversed(self.ups), reversed(self.decs), strict=True):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        x = F.interpolate(self.top_reduce(x), scale_factor=2.0, mode="bilinear",
                          align_corners=False)
        return self.head(self.top(torch.cat([x, skips.pop()], 1)))


class AudioConv1d(nn.Module):
    """M5/M11-style raw-audio classifier: a wide strided first conv, then 3-tap conv blocks
    with pooling, global average pooling and a linear layer to 35 keywords."""

    def __init__(self, classes: int = 35) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, 64, 80, 4, 38, bias=False), nn.BatchNorm1d(64),
                                   nn.ReLU(), nn.MaxPool1d(4)]
        cin = 64
        for cout, repeats in [(64, 2), (128, 2), (256, 3), (512, 2)]:
            for _ in range(repeats):
                layers += [nn.Conv1d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm1d(cout),
                           nn.ReLU()]
                cin = cout
            layers.append(nn.MaxPool1d(4) if cout < 512 else nn.Identity())
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(-1))
