"""LivePortrait's networks (Guo et al. 2024, "LivePortrait: Efficient Portrait Animation with
Stitching and Retargeting Control"), written for this project with the attribute names of the
published checkpoints, so `load_state_dict(strict=True)` takes the real weights:

- F  `AppearanceExtractor`: image -> 3D feature volume (C x D x H/4 x W/4).
- M  `MotionExtractor`: ConvNeXt-V2 -> canonical keypoints, pose bins, translation, expression, scale.
- W  `WarpingModule`: dense motion (sparse keypoint flows mixed by a 3D hourglass) + occlusion map,
  warps the volume and flattens it to 2D.
- G  `SpadeGenerator`: SPADE residual decoder, x2 pixel-shuffle upsampling (256 in, 512 out).
- S  `RetargetMLP`: the stitching, eye and lip multilayer perceptrons.

Every size comes from a config dict (`config.py`): the real sizes, or the tiny CI build's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

# --------------------------------------------------------------------------- coordinates


def coordinate_grid(d: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(d, h, w, 3) grid of (x, y, z) in [-1, 1]: x right, y down, z inwards (grid_sample's order)."""
    def axis(n):
        return torch.arange(n, dtype=like.dtype, device=like.device) * (2.0 / (n - 1)) - 1.0

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def keypoint_gaussians(kp: torch.Tensor, d: int, h: int, w: int, variance: float = 0.01) -> torch.Tensor:
    """(bs, k, 3) keypoints -> (bs, k, d, h, w) Gaussian bumps on the volume grid."""
    grid = coordinate_grid(d, h, w, kp)[None, None]
    diff = grid - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / variance)


# --------------------------------------------------------------------------- blocks


class SameBlock2d(nn.Module):
    def __init__(self, cin, cout, kernel_size=3, padding=1, lrelu=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(cout, affine=True)
        self.ac = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x):
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(cout, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class ResBlock3d(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels, affine=True)
        self.norm2 = nn.BatchNorm3d(channels, affine=True)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out))) + x


class DownBlock3d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(cout, affine=True)
        self.pool = nn.AvgPool3d(kernel_size=(1, 2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock3d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(cout, affine=True)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=(1, 2, 2))
        return F.relu(self.norm(self.conv(x)))


class HourglassEncoder(nn.Module):
    def __init__(self, expansion, cin, blocks, max_features):
        super().__init__()
        width = [cin] + [min(max_features, expansion * 2 ** (i + 1)) for i in range(blocks)]
        self.down_blocks = nn.ModuleList(DownBlock3d(width[i], width[i + 1]) for i in range(blocks))

    def forward(self, x):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, expansion, cin, blocks, max_features):
        super().__init__()
        ups = []
        for i in reversed(range(blocks)):
            into = (1 if i == blocks - 1 else 2) * min(max_features, expansion * 2 ** (i + 1))
            ups.append(UpBlock3d(into, min(max_features, expansion * 2 ** i)))
        self.up_blocks = nn.ModuleList(ups)
        self.out_filters = expansion + cin
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, skips):
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    def __init__(self, expansion, cin, blocks, max_features):
        super().__init__()
        self.encoder = HourglassEncoder(expansion, cin, blocks, max_features)
        self.decoder = HourglassDecoder(expansion, cin, blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


# --------------------------------------------------------------------------- F: appearance


class AppearanceExtractor(nn.Module):
    def __init__(self, image_channel, block_expansion, num_down_blocks, max_features, reshape_channel,
                 reshape_depth, num_resblocks):
        super().__init__()
        self.reshape_channel, self.reshape_depth = reshape_channel, reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        width = [min(max_features, block_expansion * 2 ** i) for i in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(width[i], width[i + 1]) for i in range(num_down_blocks))
        self.second = nn.Conv2d(width[-1], max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, image):
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        bs, _, h, w = out.shape
        return self.resblocks_3d(out.view(bs, self.reshape_channel, self.reshape_depth, h, w))


# --------------------------------------------------------------------------- M: motion (ConvNeXt-V2)


class ChannelsFirstNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (ConvNeXt's stem and downsampling)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ChannelsLastNorm(nn.Module):
    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class GlobalResponseNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = ChannelsLastNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, depths, dims, num_kp, num_bins=66, in_chans=3):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), ChannelsFirstNorm(dims[0]))]
            + [nn.Sequential(ChannelsFirstNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
               for i in range(3)])
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(dims[i]) for _ in range(depths[i])])
                                    for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.fc_kp = nn.Linear(dims[-1], 3 * num_kp)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], num_bins)
        self.fc_yaw = nn.Linear(dims[-1], num_bins)
        self.fc_roll = nn.Linear(dims[-1], num_bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], 3 * num_kp)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean([-2, -1]))
        return {"kp": self.fc_kp(x), "pitch": self.fc_pitch(x), "yaw": self.fc_yaw(x), "roll": self.fc_roll(x),
                "t": self.fc_t(x), "exp": self.fc_exp(x), "scale": self.fc_scale(x)}


class MotionExtractor(nn.Module):
    def __init__(self, num_kp, depths, dims, num_bins=66):
        super().__init__()
        self.detector = ConvNeXtV2(depths, dims, num_kp, num_bins)

    def forward(self, x):
        return self.detector(x)


# --------------------------------------------------------------------------- W: warping


class DenseMotion(nn.Module):
    def __init__(self, block_expansion, num_blocks, max_features, num_kp, feature_channel, reshape_depth, compress):
        super().__init__()
        self.num_kp = num_kp
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, kernel_size=7, padding=3)

    def forward(self, feature, kp_driving, kp_source):
        feature = F.relu(self.norm(self.compress(feature)))
        bs, c, d, h, w = feature.shape
        k = self.num_kp + 1
        identity = coordinate_grid(d, h, w, kp_source)[None, None]
        # For each keypoint, where a driving-space point comes from in the source: a translation
        # by (source - driving) keypoint; slot 0 is the background (identity).
        to_source = identity - kp_driving.view(bs, -1, 1, 1, 1, 3) + kp_source.view(bs, -1, 1, 1, 1, 3)
        motions = torch.cat([identity.expand(bs, 1, d, h, w, 3), to_source], dim=1)
        repeated = feature[:, None].expand(bs, k, c, d, h, w).reshape(bs * k, c, d, h, w)
        deformed = F.grid_sample(repeated, motions.reshape(bs * k, d, h, w, 3), align_corners=False)
        deformed = deformed.view(bs, k, c, d, h, w)
        heat = keypoint_gaussians(kp_driving, d, h, w) - keypoint_gaussians(kp_source, d, h, w)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)[:, :, None]
        prediction = self.hourglass(torch.cat([heat, deformed], dim=2).view(bs, -1, d, h, w))
        mask = F.softmax(self.mask(prediction), dim=1)[:, :, None]
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * mask).sum(dim=1).permute(0, 2, 3, 4, 1)
        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(bs, -1, h, w)))
        return deformation, occlusion


class WarpingModule(nn.Module):
    def __init__(self, num_kp, block_expansion, max_features, num_down_blocks, reshape_channel, dense_motion_params,
                 estimate_occlusion_map=True):
        super().__init__()
        self.dense_motion_network = DenseMotion(num_kp=num_kp, feature_channel=reshape_channel, **dense_motion_params)
        width = block_expansion * 2 ** num_down_blocks
        self.third = SameBlock2d(max_features, width, lrelu=True)
        self.fourth = nn.Conv2d(width, width, kernel_size=1)

    def forward(self, feature_3d, kp_driving, kp_source):
        deformation, occlusion = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = F.grid_sample(feature_3d, deformation, align_corners=False)
        bs, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(bs, c * d, h, w)))
        return out * occlusion


# --------------------------------------------------------------------------- G: SPADE decoder


class Spade(nn.Module):
    def __init__(self, channels, label_channels, hidden=128):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)

    def forward(self, x, seg):
        act = self.mlp_shared(F.interpolate(seg, size=x.shape[2:], mode="nearest"))
        return self.param_free_norm(x) * (1 + self.mlp_gamma(act)) + self.mlp_beta(act)


class SpadeResBlock(nn.Module):
    def __init__(self, fin, fout, label_channels, hidden):
        super().__init__()
        self.learned_shortcut = fin != fout
        mid = min(fin, fout)
        # Spectral norm as trained: the checkpoints hold weight_orig / weight_u / weight_v.
        self.conv_0 = spectral_norm(nn.Conv2d(fin, mid, kernel_size=3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(mid, fout, kernel_size=3, padding=1))
        self.norm_0 = Spade(fin, label_channels, hidden)
        self.norm_1 = Spade(mid, label_channels, hidden)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, kernel_size=1, bias=False))
            self.norm_s = Spade(fin, label_channels, hidden)

    def forward(self, x, seg):
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class SpadeGenerator(nn.Module):
    def __init__(self, upscale=2, max_features=512, block_expansion=64, out_channels=64, num_down_blocks=2,
                 spade_hidden=128):
        super().__init__()
        cin = min(max_features, block_expansion * 2 ** num_down_blocks)
        self.fc = nn.Conv2d(cin, 2 * cin, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SpadeResBlock(2 * cin, 2 * cin, cin, spade_hidden))
        self.up_0 = SpadeResBlock(2 * cin, cin, cin, spade_hidden)
        self.up_1 = SpadeResBlock(cin, out_channels, cin, spade_hidden)
        self.up = nn.Upsample(scale_factor=2)
        if upscale and upscale > 1:
            self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * 4, kernel_size=3, padding=1), nn.PixelShuffle(2))
        else:
            self.conv_img = nn.Conv2d(out_channels, 3, 3, padding=1)

    def forward(self, feature):
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(self.up(x), feature)
        x = self.up_1(self.up(x), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))


# --------------------------------------------------------------------------- S: stitching, retargeting


class RetargetMLP(nn.Module):
    def __init__(self, input_size, hidden_sizes, output_size):
        super().__init__()
        layers, width = [], input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)
