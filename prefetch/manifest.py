"""The model manifest: every model the backend can load, where it comes from, what it costs.

One frozen `ModelSpec` per model. `MANIFEST` maps key -> spec; the downloader, the VRAM
offloader (size estimates before the first real measurement), `/v1/models` and the notebook's
prefetch cell all read it. Nothing here imports torch or touches the network.

Sources (`ModelSpec.source`):
- "hub": a Hugging Face repo at a pinned `revision` (a 40-hex commit sha, or "main" with a
  `# TODO pin` where no sha could be confirmed from public material); `files` are the
  allow-patterns / exact filenames to download (fnmatch patterns, as `snapshot_download` takes).
- "url": a direct download (`url`) checked against `sha256` (InsightFace's buffalo_l zip).
- "package": ships inside a pip package (`pip_package`): nothing to download.

Sizes are bytes on disk after download (exact where the file listing was public, otherwise
approximate). `vram_bytes` are per-dtype estimates of weights plus typical working memory on a
T4; the offloader replaces them with the footprint it measures on the first load.

Smoke models: each family registers a builder of tiny random-weight models with
`@smoke_builder("image")`; `python -m prefetch --smoke` runs them into `<data_dir>/models/`.
Builders live in `services/<family>/smoke.py` (family package) or `services/<family>_smoke.py`
(see `SMOKE_MODULE_CANDIDATES`): `discover_smoke_builders()` imports whichever exists.
"""
from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

log = logging.getLogger("enfoads.prefetch")

FAMILIES: tuple[str, ...] = ("image", "face", "whisper", "tts", "vita", "animate")
RUNTIMES: tuple[str, ...] = ("torch", "ctranslate2", "onnx")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

GB = 10**9  # sizes are reported in decimal GB, as the hub shows them
MB = 10**6


@dataclass(frozen=True)
class ModelSpec:
    key: str
    family: str
    repo_id: str
    revision: str
    files: tuple[str, ...]
    size_bytes: int
    vram_bytes: Mapping[str, int] = field(hash=False)
    license: str
    runtime: str
    gated: bool = False
    note: str = ""
    # Checksum of the single downloaded artifact (a one-file model, or the archive of a "url"
    # source); None where no public checksum is known.
    sha256: str | None = None
    # Per-file sha256 where public material lists them (verified after download when present).
    checksums: Mapping[str, str] = field(default_factory=dict, hash=False)
    url: str = ""  # direct-download source (no hub repo)
    pip_package: str = ""  # the model ships in this pip package (no download)
    also_used_by: tuple[str, ...] = ()  # other families that load this model
    # Other manifest models this one cannot run without (downloaded with it: `python -m prefetch
    # chatterbox-es-latam` also fetches the shared V3 files the pack does not carry).
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.key}: unknown family {self.family!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"{self.key}: unknown runtime {self.runtime!r}")
        if self.repo_id and not (self.revision == "main" or SHA_RE.match(self.revision)):
            raise ValueError(f"{self.key}: revision must be a 40-hex commit sha or 'main'")
        if self.sha256 is not None and not SHA256_RE.match(self.sha256):
            raise ValueError(f"{self.key}: sha256 must be 64 lowercase hex digits")
        for fam in self.also_used_by:
            if fam not in FAMILIES:
                raise ValueError(f"{self.key}: unknown family {fam!r} in also_used_by")
        # Read-only views: a spec is shared by every module that imports the manifest.
        object.__setattr__(self, "vram_bytes", MappingProxyType(dict(self.vram_bytes)))
        object.__setattr__(self, "checksums", MappingProxyType(dict(self.checksums)))
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "requires", tuple(self.requires))

    @property
    def source(self) -> str:
        if self.repo_id:
            return "hub"
        if self.url:
            return "url"
        if self.pip_package:
            return "package"
        return "settings"

    @property
    def pinned(self) -> bool:
        return bool(SHA_RE.match(self.revision))

    @property
    def location(self) -> str:
        """Short human label of where the model comes from: repo@rev7, url host, pip package."""
        if self.source == "hub":
            rev = self.revision[:7] if self.pinned else self.revision
            return f"{self.repo_id}@{rev}"
        if self.source == "url":
            rest = self.url.split("://", 1)[-1]
            return f"{rest.split('/', 1)[0]}/.../{rest.rsplit('/', 1)[-1]}"
        if self.source == "package":
            return f"pip:{self.pip_package}"
        return "(settings)"

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "family": self.family,
            "source": self.source,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "pinned": self.pinned,
            "files": list(self.files),
            "size_bytes": self.size_bytes,
            "vram_bytes": dict(self.vram_bytes),
            "license": self.license,
            "runtime": self.runtime,
            "gated": self.gated,
            "note": self.note,
            "sha256": self.sha256,
            "checksums": dict(self.checksums),
            "url": self.url,
            "pip_package": self.pip_package,
            "also_used_by": list(self.also_used_by),
            "requires": list(self.requires),
        }


# ---------------------------------------------------------------------------------------------
# The models.
#
# Where each pinned revision comes from (all public material, found by searching public code):
# the commit is the `snapshots/<sha>` directory name of the repo's hub cache, or a `revision=`
# that public projects pin, seen in several independent repositories unless noted.
# ---------------------------------------------------------------------------------------------

_SPECS: list[ModelSpec] = [
    # ---- image: SDXL base (text encoders, tokenizers, scheduler, configs) + Lightning UNet + VAE
    ModelSpec(
        key="sdxl-base",
        family="image",
        repo_id="stabilityai/stable-diffusion-xl-base-1.0",
        # hub cache snapshot dir in many public projects (BrushNet, InstantStyle, ...)
        revision="462165984030d82259a11f4367a4eed129e94a7b",
        # Only what the Lightning pipeline needs from base: the UNet comes from SDXL-Lightning
        # (built from unet/config.json) and the VAE from sdxl-vae-fp16-fix, so neither set of
        # base weights is downloaded. fp16 variant files keep Colab's ~12 GB RAM safe.
        files=(
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder_2/config.json",
            "text_encoder_2/model.fp16.safetensors",
            "tokenizer/*",
            "tokenizer_2/*",
            "unet/config.json",
        ),
        size_bytes=1_640 * MB,  # CLIP-L fp16 ~246 MB + OpenCLIP-bigG fp16 ~1.39 GB + tokenizers
        vram_bytes={"fp16": 1_800 * MB, "fp32": 3_500 * MB},
        license="openrail++",
        runtime="torch",
        note="text encoders + tokenizers + scheduler/unet configs only; load with variant='fp16', "
        "pass unet= (Lightning) and vae= (fp16-fix) to from_pretrained",
    ),
    ModelSpec(
        key="sdxl-lightning-unet-4step",
        family="image",
        repo_id="ByteDance/SDXL-Lightning",
        # hub cache snapshot dir in public code (two independent files)
        revision="c9a24f48e1c025556787b0c58dd67a091ece2e44",
        files=("sdxl_lightning_4step_unet.safetensors",),
        size_bytes=5_140 * MB,  # full SDXL UNet in fp16
        # weights 5.14 GB + activations of a 1024x1024 batch-1 step
        vram_bytes={"fp16": 6_500 * MB, "fp32": 12_500 * MB},
        license="openrail++",
        runtime="torch",
        note="UNet2DConditionModel.from_config(sdxl-base/unet) + load_state_dict; "
        "EulerDiscreteScheduler(timestep_spacing='trailing'), 4 steps, guidance_scale=0",
    ),
    # The other Lightning step counts: same repo and revision, one full fp16 UNet each; only the
    # step counts a user asks for need downloading (the service says which one is missing).
    *(
        ModelSpec(
            key=f"sdxl-lightning-unet-{steps}step",
            family="image",
            repo_id="ByteDance/SDXL-Lightning",
            revision="c9a24f48e1c025556787b0c58dd67a091ece2e44",
            files=(filename,),
            size_bytes=5_140 * MB,
            vram_bytes={"fp16": 6_500 * MB, "fp32": 12_500 * MB},
            license="openrail++",
            runtime="torch",
            note=note,
        )
        for steps, filename, note in (
            (1, "sdxl_lightning_1step_unet_x0.safetensors",
             "x0-prediction UNet: EulerDiscreteScheduler(timestep_spacing='trailing', "
             "prediction_type='sample'), 1 step, guidance_scale=0 (experimental per the model card)"),
            (2, "sdxl_lightning_2step_unet.safetensors",
             "EulerDiscreteScheduler(timestep_spacing='trailing'), 2 steps, guidance_scale=0"),
            (8, "sdxl_lightning_8step_unet.safetensors",
             "EulerDiscreteScheduler(timestep_spacing='trailing'), 8 steps, guidance_scale=0"),
        )
    ),
    ModelSpec(
        key="sdxl-vae-fp16-fix",
        family="image",
        repo_id="madebyollin/sdxl-vae-fp16-fix",
        # hub cache snapshot dir loaded directly with AutoencoderKL.from_pretrained in public
        # code (two independent files); 4df413c... and 97b09ba... also appear (older snapshots)
        revision="207b116dae70ace3637169f1ddd2434b91b3a8cd",
        files=("config.json", "diffusion_pytorch_model.safetensors"),
        size_bytes=335 * MB,  # fp32 weights; cast to fp16 at load
        # weights ~0.17 GB fp16 + the decoder's activations at 1024x1024 (tiling lowers it)
        vram_bytes={"fp16": 1_500 * MB, "fp32": 3_000 * MB},
        license="mit",
        runtime="torch",
        note="SDXL's stock VAE overflows in fp16 (black images): always decode with this one",
    ),
    # ---- image: pose control. xinsir's OpenPose ControlNet for SDXL (Apache-2.0; trained on
    # skeletons drawn the way DWPose draws them, hands and face included; diffusers layout, so
    # ControlNetModel.from_pretrained reads it as is) and DWPose's two ONNX graphs that draw those
    # skeletons from a photo.
    ModelSpec(
        key="controlnet-openpose-sdxl",
        family="image",
        repo_id="xinsir/controlnet-openpose-sdxl-1.0",
        # hub cache snapshot dir in public code (one project; the newest commit seen)
        revision="23f966cd5cfdd3f7729c903e243d87152162d2b7",
        # the repo also holds diffusion_pytorch_model_twins.safetensors (another training run, 5 GB): not used
        files=("config.json", "diffusion_pytorch_model.safetensors"),
        size_bytes=5_000 * MB,  # approximate: ~1.25B parameters stored in fp32; cast to fp16 at load
        # weights 2.5 GB fp16 + its activations at 1024x1024 (a copy of the UNet's encoder half)
        vram_bytes={"fp16": 2_900 * MB, "fp32": 5_600 * MB},
        license="apache-2.0",
        runtime="torch",
        note="ControlNetModel.from_pretrained; run with StableDiffusionXLControlNetPipeline built from the loaded "
        "SDXL-Lightning components (SDXL is not loaded twice); control image: an OpenPose skeleton on black",
    ),
    ModelSpec(
        key="dwpose",
        family="image",
        repo_id="yzd-v/DWPose",
        # hub cache snapshot dir in public code (comfyui_controlnet_aux's checkpoint folder)
        revision="1a7144101628d69ee7a3768d1ee3a094070dc388",
        files=("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
        size_bytes=351 * MB,  # approximate: YOLOX-L detector ~217 MB + DWPose-L whole-body ~134 MB
        vram_bytes={"fp32": 900 * MB},  # fp32 ONNX graphs + cuDNN workspace
        license="apache-2.0",
        runtime="onnx",
        note="YOLOX-L person detector (input 'images' 1x3x640x640) + DWPose-L RTMPose whole-body keypoints "
        "(133 COCO-WholeBody points; input 1x3x384x288, outputs simcc_x 1x133x576, simcc_y 1x133x768), on ONNX Runtime",
    ),
    # ---- whisper: CTranslate2 conversions (faster-whisper)
    ModelSpec(
        key="whisper-large-v3-turbo",
        family="whisper",
        repo_id="mobiuslabsgmbh/faster-whisper-large-v3-turbo",
        # the repo faster-whisper maps "large-v3-turbo" to; hub cache snapshot dir in many
        # public projects
        revision="0a363e9161cbc7ed1431c9597a8ceaf0c4f78fcf",
        files=("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json",
               "vocabulary.*"),
        size_bytes=1_620 * MB,
        vram_bytes={"int8_float16": 1_100 * MB, "fp16": 2_000 * MB, "fp32": 3_600 * MB},
        license="mit",
        runtime="ctranslate2",
        also_used_by=("vita",),
        note="809M params, 128 mel bins; int8_float16 on the T4",
    ),
    ModelSpec(
        key="whisper-small",
        family="whisper",
        repo_id="Systran/faster-whisper-small",
        revision="536b0662742c02347bc0e980a01041f333bce120",  # hub cache snapshot dir, public code
        files=("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json",
               "vocabulary.*"),
        size_bytes=484 * MB,
        vram_bytes={"int8_float16": 450 * MB, "fp16": 700 * MB, "fp32": 1_200 * MB},
        license="mit",
        runtime="ctranslate2",
        also_used_by=("vita",),
        note="244M params; a lighter choice for the realtime assistant",
    ),
    ModelSpec(
        key="whisper-base",
        family="whisper",
        repo_id="Systran/faster-whisper-base",
        revision="ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66",  # hub cache snapshot dir, public code
        files=("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json",
               "vocabulary.*"),
        size_bytes=145 * MB,
        vram_bytes={"int8_float16": 200 * MB, "fp16": 300 * MB, "fp32": 450 * MB},
        license="mit",
        runtime="ctranslate2",
        also_used_by=("vita",),
        note="74M params; CPU-friendly; the smoke profile's whisper (a tiny build under this key)",
    ),
    # ---- face: InsightFace
    ModelSpec(
        key="buffalo_l",
        family="face",
        repo_id="",
        revision="",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        # sha256 of buffalo_l.zip (288,621,354 bytes), listed identically by many public projects
        sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
        files=("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"),
        checksums={
            "det_10g.onnx": "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
            "w600k_r50.onnx": "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
            "1k3d68.onnx": "df5c06b8a0c12e422b2ed8947b8869faa4105387f199c477af038aa01f9a45cc",
        },
        size_bytes=341_268_726,  # the five extracted .onnx files
        also_used_by=("animate",),
        vram_bytes={"fp32": 1_000 * MB},  # fp32 ONNX graphs + cuDNN workspace
        license="non-commercial (InsightFace models)",
        runtime="onnx",
        note="InsightFace's pretrained models are for non-commercial research only. "
        "InsightFace's own release zip (FaceAnalysis downloads the same file); extract into "
        "<models_dir>/buffalo_l/models/buffalo_l/ (FaceAnalysis root=<models_dir>/buffalo_l). A hub mirror exists at public-data/insightface "
        "(models/buffalo_l/*), unpinned",
    ),
    ModelSpec(
        key="inswapper_128",
        family="face",
        # No longer published by InsightFace. Default: a community mirror widely referenced in
        # public code; the real location comes from settings (hub repo + filename, or a local
        # path), and the file is accepted only if its sha256 matches. Other mirrors seen in
        # public material: julianko/inswapper_128.onnx, datasets/Gourieff/ReActor
        # (models/inswapper_128.onnx), facefusion-assets models-3.0.0 release.
        repo_id="ezioruan/inswapper_128.onnx",
        revision="main",  # TODO pin (no commit sha of this mirror found; the sha256 is the guard)
        files=("inswapper_128.onnx",),
        # published hash of the canonical fp32 file (554,253,681 bytes): ReActor's README,
        # many download scripts
        sha256="e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
        size_bytes=554_253_681,
        vram_bytes={"fp32": 1_000 * MB},
        license="non-commercial (InsightFace models)",
        runtime="onnx",
        note="non-commercial research only; load with insightface.model_zoo.get_model; keep it OUT of the buffalo_l "
        "folder. Location from settings: ENFOADS_FACE_INSWAPPER_PATH, else <models_dir>/inswapper_128/, else the "
        "hub cache of ENFOADS_FACE_INSWAPPER_REPO/_FILENAME/_REVISION; sha256 checked (ENFOADS_FACE_INSWAPPER_SHA256)",
    ),
    # ---- creator finishing tools: Real-ESRGAN upscaling (image) and GFPGAN face restoration (face),
    # loaded by spandrel from the published .pth files (no basicsr). Each is one file from its
    # authors' GitHub release; sizes and sha256 are the release files', listed identically by many
    # independent public projects. The files hold the weights under `params_ema` (spandrel unwraps
    # `params_ema` / `params`, as the authors' own loaders do).
    ModelSpec(
        key="realesrgan-x4plus",
        family="image",
        repo_id="",
        revision="",
        url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        files=("RealESRGAN_x4plus.pth",),
        size_bytes=67_040_989,
        # 16.7M-parameter RRDBNet (23 blocks, 64 features) + one tile's activations (the tile
        # size follows the free memory, so this is what a 512-px tile takes)
        vram_bytes={"fp16": 1_200 * MB, "fp32": 2_400 * MB},
        license="bsd-3-clause",
        runtime="torch",
        note="x4 general photo upscaler (RRDBNet, new-arch keys: conv_first, body.N.rdbM, conv_up1/2, conv_hr, "
        "conv_last); run in tiles with overlap",
    ),
    ModelSpec(
        key="realesrgan-x2plus",
        family="image",
        repo_id="",
        revision="",
        url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
        sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
        files=("RealESRGAN_x2plus.pth",),
        size_bytes=67_061_725,
        vram_bytes={"fp16": 1_000 * MB, "fp32": 2_000 * MB},
        license="bsd-3-clause",
        runtime="torch",
        note="x2 upscaler: the x4 RRDBNet behind a 2x pixel-unshuffle (12 input channels); sizes must be "
        "multiples of 2 (padded and cropped)",
    ),
    ModelSpec(
        key="gfpgan-v1.4",
        family="face",
        repo_id="",
        revision="",
        url="https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
        sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        files=("GFPGANv1.4.pth",),
        size_bytes=348_632_874,
        # 87M parameters in fp32 (spandrel: no fp16 for GFPGAN) + a 512x512 face's activations
        vram_bytes={"fp32": 800 * MB},
        license="apache-2.0",
        runtime="torch",
        also_used_by=("image",),
        note="blind face restoration on a 512x512 aligned face (GFPGANv1Clean, no custom CUDA ops). TencentARC/"
        "GFPGAN is Apache-2.0; its LICENSE lists third-party code under other terms (StyleGAN2's CUDA ops: NVIDIA "
        "non-commercial; DFDNet: CC BY-NC-SA) that the clean architecture run here does not use",
    ),
    # ---- tts: Chatterbox (Resemble AI) and Kyutai DSM TTS (moshi)
    ModelSpec(
        key="chatterbox-multilingual",
        family="tts",
        repo_id="ResembleAI/chatterbox",
        # The multilingual-v2 revision chatterbox-tts 0.1.7 loads (its from_local hardcodes
        # t3_mtl23ls_v2); the repo's main later moved to v3 weights. Pinned with these per-file
        # hashes by a public project (yapper), and seen as a hub snapshot dir in several more.
        revision="05e904af2b5c7f8e482687a9d7336c5c824467d9",
        files=("ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt",
               "grapheme_mtl_merged_expanded_v1.json", "conds.pt", "Cangjie5_TC.json"),
        checksums={
            "Cangjie5_TC.json": "7073fd9de919443ae88e0bd2449917a65fe54898a4413ed1edcc4b67f28bce8c",
            "conds.pt": "6552d70568833628ba019c6b03459e77fe71ca197d5c560cef9411bee9d87f4e",
            "grapheme_mtl_merged_expanded_v1.json":
                "df81a7ca7c31796cbe97f7a7142d5a53b12e88e12417ebe98f66602cafaf0461",
            "s3gen.pt": "9b9ff07e60b20c136e2b1b3d7563a24604e8d2c4c267888d1ee929dd0151d2a3",
            "t3_mtl23ls_v2.safetensors":
                "b1237586127ce98e7800a68e49938eb5092846862aabcb6e17b2fda7889a6c75",
            "ve.pt": "4b16d836bc598509860f6fa068165a8bb5e9ac84f05582dfcf278a5a372879f1",
        },
        size_bytes=3_208_951_770,
        # T3 0.5B (2.14 GB fp32) + S3Gen 1.06 GB (stays fp32) + working memory
        vram_bytes={"fp32": 4_000 * MB, "fp16": 2_900 * MB},
        license="mit",
        runtime="torch",
        also_used_by=("vita",),
        note="23 languages incl. Spanish; the tokenizer fetches Cangjie5_TC.json on load: ship "
        "it and set HF_HUB_OFFLINE",
    ),
    # Chatterbox Multilingual V3 (June 2026) and its Latin-American Spanish fine-tune.
    # Established from public material (2026-11):
    # - resemble-ai/chatterbox main, src/chatterbox/mtl_tts.py after PR #516 (3f35dfc): V3 is
    #   `t3_mtl23ls_v3.safetensors` loaded with the same ve.pt, s3gen.pt, grapheme tokenizer,
    #   conds.pt and Cangjie5_TC.json as V2 (its from_pretrained allow_patterns); the T3 file is the
    #   only loader difference; inference: no alignment analyzer, repetition_penalty 1.2, the final
    #   speech token's audio dropped.
    # - revision 5bb1f6ee58e50c3b8d408bc82a6d3740c2db6e18 of ResembleAI/chatterbox: pinned for the
    #   V3 file set in several independent public projects (download scripts, a pinned test
    #   manifest with per-file sha256, hub-cache snapshot paths); the checksums below are that
    #   test manifest's. ve.pt, s3gen.pt, conds.pt and Cangjie5_TC.json hash the same as at the V2
    #   revision (the hub cache stores them once); the grapheme tokenizer differs.
    # - ResembleAI/Chatterbox-Multilingual-es-mx-latam (model card: MIT, "Single Language Pack" V3
    #   fine-tune for Latin America and Mexico): public loaders of five independent projects read
    #   `t3_es_mx_latam.safetensors` (2.14 GB), `s3gen_v3.pt` (1.06 GB, paired with that T3 in
    #   Resemble's demo Space) and its own `grapheme_mtl_merged_expanded_v1.json` (~70 KB), and take
    #   ve.pt / conds.pt from ResembleAI/chatterbox (the pack does not ship them). Revision
    #   27e595bf... is the hub-cache snapshot dir of that repo in public notes. The T3 name is
    #   matched by pattern (`t3_*.safetensors`): the engine loads the folder's one T3 file and
    #   answers 503 saying what it found if there is not exactly one.
    ModelSpec(
        key="chatterbox-multilingual-v3",
        family="tts",
        repo_id="ResembleAI/chatterbox",
        revision="5bb1f6ee58e50c3b8d408bc82a6d3740c2db6e18",
        files=("ve.pt", "t3_mtl23ls_v3.safetensors", "s3gen.pt",
               "grapheme_mtl_merged_expanded_v1.json", "conds.pt", "Cangjie5_TC.json"),
        checksums={
            "Cangjie5_TC.json": "7073fd9de919443ae88e0bd2449917a65fe54898a4413ed1edcc4b67f28bce8c",
            "conds.pt": "6552d70568833628ba019c6b03459e77fe71ca197d5c560cef9411bee9d87f4e",
            "grapheme_mtl_merged_expanded_v1.json":
                "69632f47220a788a52ce2661d096453c5655e9bf25289d89a8d832c46ee07dbf",
            "s3gen.pt": "9b9ff07e60b20c136e2b1b3d7563a24604e8d2c4c267888d1ee929dd0151d2a3",
            "t3_mtl23ls_v3.safetensors":
                "5abca8321ede76f8e61f1cc0d19aea6c946b28871017ce8726f8a69203f05953",
            "ve.pt": "4b16d836bc598509860f6fa068165a8bb5e9ac84f05582dfcf278a5a372879f1",
        },
        # same architecture and shared files as V2 (3,208,951,770 bytes); approximate
        size_bytes=3_209 * MB,
        vram_bytes={"fp32": 4_000 * MB, "fp16": 2_900 * MB},
        license="mit",
        runtime="torch",
        also_used_by=("vita",),
        note="Chatterbox Multilingual V3: 23 languages, same 0.5B Llama T3 as V2; run without the "
        "alignment analyzer, repetition_penalty 1.2, last speech token's audio dropped",
    ),
    ModelSpec(
        key="chatterbox-v3-shared",
        family="tts",
        repo_id="ResembleAI/chatterbox",
        revision="5bb1f6ee58e50c3b8d408bc82a6d3740c2db6e18",
        files=("ve.pt", "conds.pt", "Cangjie5_TC.json"),
        checksums={
            "Cangjie5_TC.json": "7073fd9de919443ae88e0bd2449917a65fe54898a4413ed1edcc4b67f28bce8c",
            "conds.pt": "6552d70568833628ba019c6b03459e77fe71ca197d5c560cef9411bee9d87f4e",
            "ve.pt": "4b16d836bc598509860f6fa068165a8bb5e9ac84f05582dfcf278a5a372879f1",
        },
        size_bytes=8 * MB,  # approximate: voice encoder ~5.7 MB, built-in voice, Cangjie table
        vram_bytes={"fp32": 20 * MB},
        license="mit",
        runtime="torch",
        also_used_by=("vita",),
        note="what the single-language packs load from ResembleAI/chatterbox: the voice encoder, "
        "the built-in voice and the Chinese Cangjie table the multilingual tokenizer reads",
    ),
    ModelSpec(
        key="chatterbox-es-latam",
        family="tts",
        repo_id="ResembleAI/Chatterbox-Multilingual-es-mx-latam",
        revision="27e595bf2fe7be0533ca299d9afafcde08b7cca7",
        files=("t3_*.safetensors", "s3gen_v3.pt", "grapheme_mtl_merged_expanded_v1.json"),
        size_bytes=3_200 * MB,  # approximate: T3 2.14 GB + S3Gen v3 1.06 GB + tokenizer 70 KB
        vram_bytes={"fp32": 4_000 * MB, "fp16": 2_900 * MB},
        license="mit",
        runtime="torch",
        also_used_by=("vita",),
        requires=("chatterbox-v3-shared",),
        note="Latin-American Spanish (es-MX / LatAm) V3 fine-tune: Spanish only, voice cloning; "
        "the V3 inference path; ve.pt, conds.pt and Cangjie5_TC.json from chatterbox-v3-shared",
    ),
    ModelSpec(
        key="spacy-pkuseg-ontonotes",
        family="tts",
        repo_id="",
        revision="",
        # The Chinese word segmenter Chatterbox's multilingual tokenizer builds at load: the
        # model `spacy_pkuseg.pkuseg()` would download into ~/.pkuseg on first use (this URL and
        # hash are spacy-pkuseg 1.0.2's own, from its config.py). Loaded from here by path.
        url="https://github.com/explosion/spacy-pkuseg/releases/download/v0.0.26/spacy_ontonotes.zip",
        sha256="b216e7f92de7ae285aeab8feba2faa8ea8216e5995ff6fb3d391cc8356db1bfe",
        files=("features.msgpack", "weights.npz"),
        size_bytes=40 * MB,  # approximate: no public listing of the archive's size was found
        vram_bytes={"fp32": 1 * MB},  # runs on the CPU (Cython); nothing goes to the GPU
        license="mit (spacy-pkuseg; model trained by Explosion on OntoNotes 5.0)",
        runtime="torch",
        also_used_by=("vita",),
        note="Chinese word segmentation for chatterbox-multilingual; without it Chinese text is read "
        "unsegmented (a warning at load), other languages are unaffected",
    ),
    ModelSpec(
        key="chatterbox-en",
        family="tts",
        repo_id="ResembleAI/chatterbox",
        # same revision as the multilingual files (public code downloads s3gen.safetensors at it)
        revision="05e904af2b5c7f8e482687a9d7336c5c824467d9",
        files=("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json",
               "conds.pt"),
        size_bytes=3_200 * MB,
        vram_bytes={"fp32": 4_000 * MB, "fp16": 2_900 * MB},
        license="mit",
        runtime="torch",
        note="English ChatterboxTTS.from_local file set",
    ),
    ModelSpec(
        key="chatterbox-turbo",
        family="tts",
        repo_id="ResembleAI/chatterbox-turbo",
        # hub snapshot dir / pinned resolve URL in several public projects
        revision="749d1c1a46eb10492095d68fbcf55691ccf137cd",
        # exact load set: upstream's "*.safetensors" pattern would also fetch the repo's 1 GB
        # s3gen.safetensors, which Turbo never reads
        files=("ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors",
               "conds.pt", "added_tokens.json", "special_tokens_map.json",
               "tokenizer_config.json", "vocab.json", "merges.txt"),
        size_bytes=2_987_680_596,
        vram_bytes={"fp32": 3_600 * MB, "fp16": 2_400 * MB},
        license="mit",
        runtime="torch",
        also_used_by=("vita",),
        note="English only, GPT-2-medium T3 (350M); on a T4 run fp32 (RTF 0.335) not bf16 (0.535)",
    ),
    ModelSpec(
        key="kyutai-tts-1.6b-en_fr",
        family="tts",
        repo_id="kyutai/tts-1.6b-en_fr",
        # pinned with per-file sizes and hashes in a public inspection tool; 60fa984... also
        # appears as a hub snapshot dir in public code
        revision="f65439609986c392cb12df63938abcc550c3fb15",
        files=("config.json", "dsm_tts_1e68beda@240.safetensors",
               "tokenizer-e351c8d8-checkpoint125.safetensors",
               "tokenizer_spm_8k_en_fr_audio.model"),
        checksums={
            "dsm_tts_1e68beda@240.safetensors":
                "726ddadd90a080c89cbc6b217745296ef32d8e25666d30f81a09e8ae5c9e0f0c",
            "tokenizer-e351c8d8-checkpoint125.safetensors":
                "09b782f0629851a271227fb9d36db65c041790365f11bbe5d3d59369cf863f50",
            "tokenizer_spm_8k_en_fr_audio.model":
                "cd87dd5d17169151782ac700280ec057e5d658a9afbe238a048ea5ff318cce69",
        },
        size_bytes=4_068_487_400,  # 3,683,719,712 + 384,644,900 (Mimi) + 120,378 + config
        vram_bytes={"fp16": 4_800 * MB, "bf16": 4_800 * MB, "fp32": 8_800 * MB},
        license="cc-by-4.0",
        runtime="torch",
        requires=("kyutai-tts-voices",),
        note="English and French only; needs kyutai-tts-voices too. Loaded with moshi's CheckpointInfo."
        "from_hf_repo (every path given: no hub call; config.json must not name mimi_config_name or "
        "lora_name) and TTSModel.from_checkpoint_info; moshi defaults to bf16: the server uses the dtype "
        "policy (fp16 on a T4, fp32 on CPU)",
    ),
    ModelSpec(
        key="kyutai-tts-voices",
        family="tts",
        repo_id="kyutai/tts-voices",
        # pinned in several public projects (resolve URLs and revision constants)
        revision="323332d33f997de8394f24a193e1a76df720e01a",
        # only the speaker embeddings for this TTS checkpoint (<voice>.wav.1e68beda@240
        # .safetensors), not the source wavs; fnmatch's * also crosses folders
        files=("*.1e68beda@240.safetensors",),
        size_bytes=150 * MB,  # approximate: ~256 KB per voice embedding
        vram_bytes={"fp32": 2 * MB},
        license="mixed: CC0/CC-BY-4.0/CC-BY-NC-4.0",
        runtime="torch",
        note="voice conditioning for kyutai-tts-1.6b-en_fr (speaker_wavs [1, 512, 125] per voice; "
        "listed as kyutai-<folder>-<file> voice ids); the license depends on the voice's "
        "folder (see its README); size approximate",
    ),
    # ---- tts: Kyutai Pocket TTS (the pocket-tts package): 100M parameters, CPU, Spanish
    # The revisions are the ones pocket-tts 4.0.1 pins in its own configs
    # (pocket_tts/config/<language>.yaml: weights_path, tokenizer_path, and
    # utils.get_predefined_voice for the voices); one revision per spec holds every file listed.
    ModelSpec(
        key="kyutai-pocket-tts",
        family="tts",
        repo_id="kyutai/pocket-tts",
        revision="3e82814a68665eec246ff649b14c71331f955c06",  # weights_path of spanish/french/.../dutch.yaml
        # the weights WITH the voice-cloning encoder (clips as voices); one model per language
        files=tuple(f"languages/{name}/model.safetensors"
                    for name in ("spanish", "french", "german", "italian", "portuguese", "dutch")),
        size_bytes=1_440 * MB,  # approximate: ~240 MB per language (118M parameters in bf16)
        # runs on the CPU by default (ENFOADS_TTS_POCKET_DEVICE): host RAM per loaded language
        vram_bytes={"fp32": 600 * MB},
        license="cc-by-4.0",
        runtime="torch",
        gated=True,
        also_used_by=("vita",),
        note="gated: accept the voice-cloning terms at https://huggingface.co/kyutai/pocket-tts and set HF_TOKEN. "
        "Loaded with pocket_tts' own TTSModel.load_model from the package's <language>.yaml, its hub paths "
        "replaced by these local files; needs kyutai-pocket-tts-voices too. Sizes approximate. English "
        "(pinned at another revision by the package) is not included: Chatterbox speaks it",
    ),
    ModelSpec(
        key="kyutai-pocket-tts-voices",
        family="tts",
        repo_id="kyutai/pocket-tts-without-voice-cloning",
        # the predefined voices' revision (get_predefined_voice); the package pins the tokenizers
        # at 4e1e0a3 (French: 8843db7), earlier commits of the same files
        revision="a7056f505a4a8ca72d8b5fb1440071d6f1a35739",
        files=tuple(f"languages/{name}/{leaf}"
                    for name in ("spanish", "french", "german", "italian", "portuguese", "dutch")
                    for leaf in ("tokenizer.json", "embeddings/*.safetensors")),
        size_bytes=120 * MB,  # approximate: a tokenizer and a few voice states per language
        vram_bytes={"fp32": 20 * MB},
        license="cc-by-4.0 (voices: see kyutai/tts-voices)",
        runtime="torch",
        also_used_by=("vita",),
        note="tokenizer + Kyutai's precomputed voices per language (pocket-<name> voice ids; Spanish: lola); "
        "the weights of this repo (no voice cloning) are not downloaded",
    ),
    # ---- vita: realtime assistant (VAD + whisper + VLM + TTS)
    # The VLM: Qwen2-VL-2B-Instruct. Qwen2VLForConditionalGeneration is in plain transformers
    # (no trust_remote_code); Apache-2.0; 2.2B params = ~4.4 GB in fp16, so on a 15 GB T4 it sits
    # next to Chatterbox multilingual (~3-4 GB), whisper turbo int8 (~1 GB) and the working
    # memory of a few video frames with room to spare. Qwen2.5-VL-3B-Instruct is the stronger
    # alternative but ~7.5 GB in fp16 (too tight beside the rest on a T4) and under the Qwen
    # Research License (non-commercial). Multilingual, answers in Spanish.
    ModelSpec(
        key="qwen2-vl-2b-instruct",
        family="vita",
        repo_id="Qwen/Qwen2-VL-2B-Instruct",
        # hub cache refs/main recorded with per-file sizes and hashes in public material
        revision="895c3a49bc3fa70a340399125c650a463535e71c",
        files=("*.json", "*.safetensors", "merges.txt", "vocab.json"),
        checksums={
            "model-00001-of-00002.safetensors":
                "994ac2b03f97de8bc647d0fe5eba2e4b632b3e28dc03574c29bdfc36cf47e1b9",
            "model-00002-of-00002.safetensors":
                "92540d8353c8d226a589a3b179bdb33851c970ee2cc2ac7ba035f79425e7b833",
        },
        size_bytes=4_429_591_597,
        # weights 4.42 GB + vision tokens of ~2 frames + a short KV cache
        vram_bytes={"fp16": 5_200 * MB, "bf16": 5_200 * MB, "fp32": 9_800 * MB},
        license="apache-2.0",
        runtime="torch",
        note="Qwen2VLForConditionalGeneration (transformers, no remote code); cap the image "
        "max_pixels so frames stay a few hundred tokens",
    ),
    # ---- animate: LivePortrait (human model), our own modules with the published key layout
    ModelSpec(
        key="liveportrait",
        family="animate",
        repo_id="KwaiVGI/LivePortrait",
        revision="main",  # TODO pin (no commit sha of this repo found in public material)
        files=(
            "liveportrait/base_models/appearance_feature_extractor.pth",
            "liveportrait/base_models/motion_extractor.pth",
            "liveportrait/base_models/warping_module.pth",
            "liveportrait/base_models/spade_generator.pth",
            "liveportrait/retargeting_models/stitching_retargeting_module.pth",
        ),
        # 3.4 + 112 + 182 + 222 + 2.4 MB (file sizes as public projects list them)
        size_bytes=522 * MB,
        # fp32 weights (~0.52 GB, autocast to fp16 on a T4) + the warping module's 3D volumes and
        # the decoder's 512x512 activations, batch 1
        vram_bytes={"fp16": 4_000 * MB, "fp32": 6_000 * MB},
        license="mit",
        runtime="torch",
        note="face crop and landmarks come from buffalo_l (needed too); the repo's insightface/ and "
        "landmark.onnx are not used",
        requires=("buffalo_l",),
    ),
    ModelSpec(
        key="silero-vad",
        family="vita",
        repo_id="",
        revision="",
        pip_package="silero-vad",
        files=("silero_vad/data/silero_vad.jit", "silero_vad/data/silero_vad.onnx"),
        size_bytes=2_300_000,  # per format (JIT ~2.2 MB, ONNX ~2.3 MB)
        vram_bytes={"fp32": 30 * MB},  # runs on CPU in practice
        license="mit",
        runtime="torch",
        note="ships inside the silero-vad package: load_silero_vad() works offline, no download",
    ),
]

MANIFEST: dict[str, ModelSpec] = {}
for _spec in _SPECS:
    if _spec.key in MANIFEST:  # pragma: no cover - a programming error in this file
        raise ValueError(f"duplicate manifest key {_spec.key!r}")
    MANIFEST[_spec.key] = _spec
del _spec
_unknown = [(s.key, r) for s in MANIFEST.values() for r in s.requires if r not in MANIFEST]
if _unknown:  # pragma: no cover - a programming error in this file
    raise ValueError(f"models require unknown models: {_unknown}")
del _unknown

VLM_KEY = "qwen2-vl-2b-instruct"
INSWAPPER_KEY = "inswapper_128"
INSWAPPER_DEFAULT_REPO = MANIFEST[INSWAPPER_KEY].repo_id
INSWAPPER_FILENAME = "inswapper_128.onnx"
INSWAPPER_SHA256 = MANIFEST[INSWAPPER_KEY].sha256


def get(key: str) -> ModelSpec:
    try:
        return MANIFEST[key]
    except KeyError:
        raise KeyError(f"unknown model {key!r}; known: {', '.join(MANIFEST)}") from None


def with_requirements(keys: Iterable[str]) -> set[str]:
    """The keys plus every model they require (transitively)."""
    todo, seen = list(keys), set()
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo += get(key).requires
    return seen


def by_family(family: str, *, shared: bool = False) -> list[ModelSpec]:
    """Specs of one family, in manifest order; `shared=True` adds the models the family also
    loads from other families (vita: whisper and TTS models)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return [s for s in MANIFEST.values()
            if s.family == family or (shared and family in s.also_used_by)]


_DTYPE_ALIASES = {
    "float16": "fp16", "half": "fp16", "fp16": "fp16", "torch.float16": "fp16",
    "bfloat16": "bf16", "bf16": "bf16", "torch.bfloat16": "bf16",
    "float32": "fp32", "float": "fp32", "fp32": "fp32", "torch.float32": "fp32",
    "int8_float16": "int8_float16", "int8_bfloat16": "int8_float16",
    "int8_float32": "int8", "int8": "int8",
}


def normalize_dtype(dtype: object) -> str:
    name = str(dtype).strip().lower()
    return _DTYPE_ALIASES.get(name, name)


def vram_estimate(key: str, dtype: object = "fp16") -> int:
    """Estimated GPU bytes of model `key` at `dtype` (names as torch, CTranslate2 or short).

    Falls back, in order: the exact dtype; bf16 <-> fp16 (same width); a model that runs at
    one precision only (ONNX graphs) -> that figure; int8 compute types -> the fp16 figure
    (an upper bound); fp16 <-> fp32 by a factor of two; else the largest figure known
    (conservative). A spec without figures -> 1.2 x its size on disk.
    """
    spec = get(key)
    table = spec.vram_bytes
    want = normalize_dtype(dtype)
    if not table:
        return int(spec.size_bytes * 1.2)
    if want in table:
        return int(table[want])
    if want in ("bf16", "fp16"):
        other = "fp16" if want == "bf16" else "bf16"
        if other in table:
            return int(table[other])
    if len(table) == 1:
        return int(next(iter(table.values())))
    if want in ("int8_float16", "int8"):
        for cand in ("int8_float16", "fp16", "bf16"):
            if cand in table:
                return int(table[cand])
        if "fp32" in table:
            return int(table["fp32"] // 2)
    if want in ("fp16", "bf16") and "fp32" in table:
        return int(table["fp32"] // 2)
    if want == "fp32":
        for cand in ("fp16", "bf16"):
            if cand in table:
                return int(table[cand] * 2)
    return int(max(table.values()))


def local_dir(data_dir: str | Path, key: str) -> Path:
    """Where a local (smoke or pre-placed) copy of model `key` lives: <data_dir>/models/<key>."""
    get(key)
    return Path(data_dir) / "models" / key


def models_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "models"


# ---------------------------------------------------------------------------------------------
# Smoke builders: tiny random-weight models in the real on-disk formats (see TESTING.md).
# ---------------------------------------------------------------------------------------------

SmokeBuilder = Callable[[Path], None]
SMOKE_BUILDERS: dict[str, SmokeBuilder] = {}

# Modules that hold a family's builder, tried in order; a missing module means "no builder yet".
SMOKE_MODULE_CANDIDATES: dict[str, tuple[str, ...]] = {
    fam: (f"services.{fam}.smoke", f"services.{fam}_smoke") for fam in FAMILIES
}


def smoke_builder(family: str) -> Callable[[SmokeBuilder], SmokeBuilder]:
    """Register `fn(models_dir: Path) -> None` as the smoke builder of `family`.

    The builder writes its tiny models under `models_dir/<key>` (see `local_dir`). One builder
    per family; registering the same function again (a module re-import) is harmless.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")

    def register(fn: SmokeBuilder) -> SmokeBuilder:
        old = SMOKE_BUILDERS.get(family)
        if old is not None and old is not fn and (
            (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__)
        ):
            raise ValueError(
                f"family {family!r} already has a smoke builder: {old.__module__}.{old.__qualname__}")
        SMOKE_BUILDERS[family] = fn
        return fn

    return register


def discover_smoke_builders(extra_modules: Iterable[str] = (), *,
                            families: Iterable[str] | None = None,
                            discover: bool = True) -> dict[str, str]:
    """Import the modules that register smoke builders: the candidates of `families` (default:
    all; none when `discover` is False) and then `extra_modules`. Returns {module: error} for
    modules that failed to import; a candidate that does not exist is simply skipped (that
    family has no builder yet), an extra module that does not exist is an error."""
    extra = tuple(extra_modules)
    errors: dict[str, str] = {}
    fams = tuple(FAMILIES if families is None else families) if discover else ()
    candidates = [m for fam in fams for m in SMOKE_MODULE_CANDIDATES.get(fam, ())]
    for name in [*candidates, *extra]:
        explicit = name in extra
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if not explicit and (name == missing or name.startswith(missing + ".")):
                continue  # the module (or its package) does not exist: no builder yet
            errors[name] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a builder module that is there but broken
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors


def families_without_smoke_builder() -> list[str]:
    return [fam for fam in FAMILIES if fam not in SMOKE_BUILDERS]
