"""Tiny random-weight SDXL-Lightning in the real on-disk layout (tests, CI, the smoke profile).

What prefetch puts on disk, in miniature:
- sdxl-base/: model_index.json, scheduler/, text_encoder{,_2}/ (config + model.fp16.safetensors),
  tokenizer{,_2}/ (vocab.json, merges.txt, configs) and unet/config.json only (no UNet or VAE
  weights: those come from the two repos below);
- sdxl-lightning-unet-{1,2,4,8}step/: one fp16 UNet state dict each, under ByteDance's names;
- sdxl-vae-fp16-fix/: config.json + diffusion_pytorch_model.safetensors (fp32, as published);
- controlnet-openpose-sdxl/: a ControlNetModel made from the UNet config (save_pretrained: config.json +
  diffusion_pytorch_model.safetensors in fp32, as xinsir publishes it), its zero convolutions given
  random weights so that it does change the UNet's output, as a trained one does;
- dwpose/: tiny YOLOX and whole-body keypoint ONNX graphs (services/pose/smoke.py).
The shapes keep SDXL's structure (two text encoders, text_time conditioning, a VAE that scales
by 8), so the product's loading code runs unchanged against them.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefetch.manifest import smoke_builder

from .controlnet import CONTROLNET_KEY
from .lightning import BASE_KEY, UNET_FILES, VAE_KEY, unet_key

MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r</w>"), ("o", "n</w>")]


@dataclass(frozen=True)
class Shapes:
    """Sizes of the random models. TINY for tests; SDXL (base 1.0's real sizes) for benchmarks,
    where random weights cost the same compute and memory as the real ones."""

    text: tuple[int, int, int, int]  # CLIP-L: hidden, intermediate, heads, layers
    text_2: tuple[int, int, int, int]  # OpenCLIP bigG: hidden, intermediate, heads, layers
    projection_dim: int
    vocab_size: int | None  # None: the tiny tokenizer's own vocabulary
    time_embed_dim: int
    unet_channels: tuple[int, int, int]
    unet_layers: int
    unet_heads: tuple[int, int, int]
    unet_transformer_layers: tuple[int, int, int]
    unet_groups: int
    vae_channels: tuple[int, int, int, int]
    vae_layers: int
    vae_groups: int


TINY = Shapes(text=(32, 37, 4, 3), text_2=(32, 37, 4, 3), projection_dim=32, vocab_size=None, time_embed_dim=8,
              unet_channels=(16, 32, 32), unet_layers=1, unet_heads=(2, 2, 2), unet_transformer_layers=(1, 1, 1),
              unet_groups=8, vae_channels=(16, 16, 16, 16), vae_layers=1, vae_groups=8)
SDXL = Shapes(text=(768, 3072, 12, 12), text_2=(1280, 5120, 20, 32), projection_dim=1280, vocab_size=49408,
              time_embed_dim=256, unet_channels=(320, 640, 1280), unet_layers=2, unet_heads=(5, 10, 20),
              unet_transformer_layers=(1, 2, 10), unet_groups=32, vae_channels=(128, 256, 512, 512), vae_layers=2,
              vae_groups=32)


def _vocab() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # CLIP's byte -> symbol table

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_vocab(), ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}))


def _text_encoders(shapes: Shapes):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = _vocab()

    def config(dims, **extra):
        hidden, intermediate, heads, layers = dims
        return CLIPTextConfig(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                              num_hidden_layers=layers, max_position_embeddings=77,
                              vocab_size=shapes.vocab_size or len(vocab), bos_token_id=vocab["<|startoftext|>"],
                              eos_token_id=vocab["<|endoftext|>"], layer_norm_eps=1e-5, **extra)

    one = CLIPTextModel(config(shapes.text, pad_token_id=1, hidden_act="quick_gelu"))
    two = CLIPTextModelWithProjection(config(shapes.text_2, pad_token_id=0, hidden_act="gelu",
                                             projection_dim=shapes.projection_dim))
    return one, two


def _unet(shapes: Shapes):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=shapes.unet_layers,
        block_out_channels=shapes.unet_channels, norm_num_groups=shapes.unet_groups,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=shapes.unet_heads, transformer_layers_per_block=shapes.unet_transformer_layers,
        use_linear_projection=True, cross_attention_dim=shapes.text[0] + shapes.text_2[0],
        addition_embed_type="text_time", addition_time_embed_dim=shapes.time_embed_dim,
        projection_class_embeddings_input_dim=6 * shapes.time_embed_dim + shapes.projection_dim,
    )


def _vae(shapes: Shapes):
    from diffusers import AutoencoderKL

    # Four blocks, as SDXL's VAE: images are 8x the latents. force_upcast=False, as the fp16-fix config.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=shapes.vae_layers,
        block_out_channels=shapes.vae_channels, norm_num_groups=shapes.vae_groups,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=1024, scaling_factor=0.13025, force_upcast=False,
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    # SDXL base's scheduler_config.json (the service swaps in trailing spacing itself).
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", prediction_type="epsilon",
                                  timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
                                  use_karras_sigmas=False)


def write_controlnet(models_dir: Path, shapes: Shapes = TINY, device: str = "cpu") -> None:
    """A random-weight OpenPose ControlNet matching the UNet of `shapes`, in the published layout."""
    import torch
    from diffusers import ControlNetModel

    folder = Path(models_dir) / CONTROLNET_KEY
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(2000)
    with torch.device(device):
        channels = (16, 32, 96, 256) if shapes is SDXL else (8, 8, 8, 8)
        controlnet = ControlNetModel.from_unet(_unet(shapes), conditioning_embedding_out_channels=channels)
        with torch.no_grad():
            for param in controlnet.parameters():
                if not param.any():  # the zero convolutions: a trained ControlNet's are not zero
                    param.normal_(0, 0.05)
    controlnet.cpu().save_pretrained(str(folder))


def write_models(models_dir: Path, shapes: Shapes = TINY, steps: tuple[int, ...] = tuple(UNET_FILES),
                 device: str = "cpu") -> None:
    """Random-weight SDXL-Lightning files under models_dir, in the layout prefetch produces.
    `device` only speeds up building large shapes (random init on a GPU)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    models_dir = Path(models_dir)
    base = models_dir / BASE_KEY
    for key in (BASE_KEY, VAE_KEY, *(unet_key(s) for s in UNET_FILES)):
        shutil.rmtree(models_dir / key, ignore_errors=True)

    torch.manual_seed(0)
    tok_dir = models_dir / ".tokenizer-src"
    _write_tokenizer(tok_dir / "tokenizer", "<|endoftext|>")
    _write_tokenizer(tok_dir / "tokenizer_2", "!")  # SDXL's second tokenizer pads with "!" (id 0)
    with torch.device(device):
        text_encoder, text_encoder_2 = _text_encoders(shapes)
        vae = _vae(shapes)
    with init_empty_weights():  # only its config goes into the base folder, as in the real repo
        unet = _unet(shapes)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tok_dir / "tokenizer_2")),
        unet=unet, scheduler=_scheduler(),
    )
    # What prefetch downloads from the base repo: model_index.json, the scheduler, the fp16 text
    # encoders, the tokenizer files (vocab.json + merges.txt, no tokenizer.json), unet/config.json.
    pipe.save_config(str(base))
    pipe.scheduler.save_pretrained(str(base / "scheduler"))
    for name, encoder in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        encoder.half().save_pretrained(str(base / name), variant="fp16")
    unet.save_config(str(base / "unet"))
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(tok_dir / name, base / name)
    shutil.rmtree(tok_dir)
    vae.save_pretrained(str(models_dir / VAE_KEY))
    del pipe, text_encoder, text_encoder_2, vae, unet

    for count in steps:
        # each checkpoint its own weights, so a swap is visible
        torch.manual_seed(1000 + count)
        with torch.device(device):
            weights = _unet(shapes).state_dict()
        state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in weights.items()}
        folder = models_dir / unet_key(count)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(state, str(folder / UNET_FILES[count]))
        del state, weights


@smoke_builder("image")
def build(models_dir: Path) -> None:
    from services.pose.smoke import write_models as write_pose_models

    write_models(models_dir)
    write_controlnet(models_dir)
    write_pose_models(models_dir)
