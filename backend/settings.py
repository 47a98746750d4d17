"""Settings: one object, from (highest first) explicit overrides, `ENFOADS_*` environment
variables, an optional YAML file (`ENFOADS_CONFIG` or `load_settings(config=...)`), defaults."""
from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from services import device as device_policy

GB = 1024**3
_yaml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("enfoads_yaml", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENFOADS_", extra="ignore")

    profile: Literal["colab", "local", "smoke"] = "local"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Path("data")
    models_dir: Path | None = Field(None, description="local model folders; default <data_dir>/models")
    api_key: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = ["*"]  # env: comma-separated
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        ["127.0.0.1", "::1"], description="addresses or networks whose X-Forwarded-* headers are believed "
                                         "(the tunnel agent); comma-separated; empty: none")
    socket_max_connections: int = Field(128, ge=1, description="open Socket.IO transports in all; more answer 401")
    socket_max_per_client: int = Field(16, ge=1, description="open Socket.IO transports per client address")
    socket_auth_timeout_s: float = Field(10.0, gt=0, description="a Socket.IO transport that has not joined an "
                                                                 "authenticated namespace by then is closed")
    max_upload_mb: float = Field(200, gt=0, description="largest request body, chunked or not (413 beyond)")
    body_timeout_seconds: float = Field(
        30, gt=0, description="longest pause while a request body arrives; after this long the body must also "
                              "keep body_min_kb_per_second on average (408 otherwise)")
    body_min_kb_per_second: float = Field(16, gt=0, description="slowest average upload rate accepted (KB/s)")
    max_concurrent_uploads: int = Field(
        2, ge=1, description="request bodies over 8 MB read at once; more wait up to 10 s, then answer 429")
    queue_max: int = Field(32, ge=1, description="queued jobs per lane beyond this answer 429")
    interactive_burst: int = Field(8, ge=1, description="most interactive jobs one pause of a batch job runs")
    interactive_max_tts_chars: int = Field(300, ge=1, description="longer speech requests run in the batch lane")
    interactive_max_audio_seconds: float = Field(60, ge=0, description="longer transcriptions run in the batch lane")
    job_wait_seconds: float = Field(60, ge=0, description="how long a request waits for its job before answering 202")
    job_retention_hours: float = Field(72, ge=0, description="finished jobs and their files are deleted after this; "
                                                              "0 keeps them forever")
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    vram_budget_gb: float | None = Field(None, gt=0, description="per device; default: each GPU's total memory, "
                                                                  "15 on CPU")
    gpus: Annotated[list[int] | None, NoDecode] = Field(
        None, description="GPUs the offloader manages, e.g. 0,1; default (or 'all'): every visible GPU")
    vram_devices: int = Field(1, ge=1, le=16, description="on CPU: simulated devices, each with the VRAM budget "
                                                           "(tests the multi-GPU bookkeeping)")
    vram_reserve_gb: float = Field(1.0, ge=0)
    host_ram_budget_gb: float = Field(6.0, ge=0, description="CPU RAM for models parked off the GPU")
    idle_offload_seconds: float = Field(300, ge=0)
    ngrok_authtoken: SecretStr | None = None
    ngrok_domain: str | None = Field(None, description="the account's static ngrok domain: a URL that survives "
                                                        "restarts (also NGROK_DOMAIN or the notebook secret)")
    public: bool = False
    log_level: str = "INFO"
    # --- distributed mode (README "Several GPUs") ---
    redis_url: SecretStr | None = Field(
        None, description="redis:// or rediss:// URL of the job queue shared by the front and its GPU workers; "
                          "unset: single process (no Redis)")
    worker_key: SecretStr | None = Field(
        None, description="the key workers present to the front (never a client's API key); unset on the front: "
                          "generated once into data/worker_key")
    front_url: str | None = Field(None, description="worker: the front's public URL (inputs, progress, outputs)")
    worker_families: Annotated[list[str], NoDecode] = Field(
        [], description="worker: the job families it runs (image, face, whisper, tts), comma-separated")
    worker_name: str = Field("", description="worker: its name in job messages and logs; default host-pid")
    worker_job_modules: Annotated[list[str], NoDecode] = Field(
        [], description="worker and front: modules whose `job_handlers(settings, model_env)` add job kinds")
    cluster_namespace: str = Field("enfoads", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                   description="prefix of every Redis key (deployments may share one Redis)")
    cluster_heartbeat_timeout_s: float = Field(
        60, gt=0, description="a worker silent on Redis this long is dead: its job goes to another worker")
    cluster_maintenance_share: float = Field(
        0.1, gt=0, le=1, description="share of a worker's Redis polls that also look for dead workers' jobs")
    cluster_poll_max_ms: int = Field(
        250, ge=10, le=5000, description="worker: longest wait between polls of an idle queue (the delay a new "
                                         "job may sit in Redis; each poll is a Redis command)")
    cluster_worker_lost_s: float = Field(
        120, gt=0, description="front: a running job whose worker has not reported for this long is lost "
                               "(queued again while attempts remain, else failed: worker lost)")
    cluster_max_attempts: int = Field(2, ge=1, le=10, description="deliveries of one job before it fails")
    cluster_job_time_limit_s: float = Field(3 * 3600, gt=0, description="longest a worker runs one job")

    # --- tts ---
    tts_default_model: str = Field("", description="model when a request names none (or an OpenAI name: tts-1, "
                                                   "gpt-4o-mini-tts); empty: the best one present for the language")
    tts_default_language: str = Field("es", description="language when a request names none")
    tts_max_chars: int = Field(5000, ge=1, description="longest text one request may speak")
    tts_clip_min_seconds: float = Field(5.0, gt=0, description="shortest reference clip for a cloned voice")
    tts_clip_max_seconds: float = Field(30.0, gt=0, description="longest reference clip for a cloned voice")
    tts_kyutai_voice: str = Field("expresso/ex03-ex01_happy_001_channel1_334s.wav",
                                  description="Kyutai's default voice: its name in kyutai/tts-voices")
    tts_kyutai_max_seconds: float = Field(
        60.0, gt=0, le=600, description="longest audio Kyutai generates for one chunk; it stops there even if "
                                        "the text is not finished")
    tts_kyutai_cfg_coef: float = Field(
        2.0, ge=1.0, le=4.0, multiple_of=0.5,
        description="Kyutai's classifier-free guidance strength (1-4 in steps of 0.5: its CFG-distilled values)")
    tts_pocket_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where Kyutai Pocket TTS runs: the CPU by default, beside the GPU's models")
    tts_pocket_voice: str | None = Field(
        None, description="Pocket TTS's default voice (a name such as 'lola'); unset: each language's own")
    tts_pocket_max_seconds: float = Field(
        60.0, gt=0, le=600, description="longest audio Pocket TTS generates for one chunk; it stops there")
    tts_kyutai_cache_mb: float = Field(
        64, ge=0, description="memory for repeated /kyutai/tts answers (same text, language, voice, model); "
                              "0 turns the cache off")

    # --- face ---
    face_det_size: int = Field(640, ge=64, le=2048, multiple_of=32,
                               description="side of the square the face detector runs at (640 = 640x640)")
    face_det_thresh: float = Field(0.5, gt=0, lt=1, description="face detection score threshold")
    face_max_image_pixels: int = Field(40_000_000, ge=1, description="larger images answer 413 before decoding")
    face_video_max_seconds: float = Field(120, gt=0, description="longer target videos answer 413")
    face_video_max_pixels: int = Field(1920 * 1088, ge=1, description="largest video frame (width x height)")
    face_execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="ONNX Runtime provider: auto = CUDA when the device is a GPU, else CPU")
    face_allow_cpu_fallback: bool = Field(
        False, description="run on CPU when the CUDA provider fails to start (reported), instead of answering 503")
    face_inswapper_path: Path | None = Field(None, description="a local inswapper_128.onnx (overrides the hub)")
    face_inswapper_repo: str = Field("ezioruan/inswapper_128.onnx", description="hub repo holding inswapper")
    face_inswapper_filename: str = "inswapper_128.onnx"
    face_inswapper_revision: str = "main"
    face_inswapper_sha256: str | None = Field(
        None, description="expected sha256 of inswapper; default: the published hash (none for smoke "
                          "models); an empty string turns the check off")
    # --- restore (upscaling, face restoration) ---
    restore_tile: int = Field(0, ge=0, le=4096, description="input pixels per tile side when upscaling; 0: from the "
                                                            "device's free memory (256 on the CPU)")
    restore_tile_overlap: int = Field(32, ge=0, le=256, description="extra input pixels around each tile (hides the "
                                                                    "joins)")
    restore_max_output_pixels: int = Field(50_000_000, ge=1, description="largest upscaled image (width x height); "
                                                                         "413 beyond")
    # --- animate ---
    animate_max_seconds: float = Field(60, gt=0, description="longest driving video or speech for the animation "
                                                             "routes (413 beyond)")
    animate_video_max_pixels: int = Field(1920 * 1088, ge=1, description="largest driving video frame")
    animate_max_image_pixels: int = Field(40_000_000, ge=1, description="larger source images answer 413")
    # --- whisper ---
    whisper_model: Literal["auto", "large-v3-turbo", "small", "base"] = Field(
        "auto", description="default transcription model; auto: large-v3-turbo, base in the smoke profile")
    whisper_compute_type: str = Field(
        "auto", description="CTranslate2 compute type; auto: int8_float16 on GPUs, int8 on CPU")
    whisper_language: str = Field("es", description="default language code, or 'auto' to detect it")
    whisper_beam_size: int = Field(5, ge=1, le=10)
    whisper_cpu_threads: int = Field(0, ge=0, description="CTranslate2 CPU threads; 0: its default")
    whisper_max_seconds: float = Field(4 * 3600, gt=0, description="longest audio/video accepted (413 beyond)")
    whisper_window_seconds: float = Field(
        300, ge=60, description="audio decoded and transcribed at a time: memory stays at about one window "
                                "(~20 MB of samples per 5 min) however long the file")
    whisper_video_max_pixels: int = Field(1920 * 1088, ge=1, description="largest frame (width x height) "
                                          "/subtitle-video accepts (413 beyond)")
    whisper_video_crf: int = Field(20, ge=0, le=51, description="x264 quality of videos with burned subtitles")

    # --- image ---
    image_max_width: int = Field(1024, ge=64, description="largest image width in pixels (multiple of 8)")
    image_max_height: int = Field(1024, ge=64, description="largest image height in pixels (multiple of 8)")
    image_min_side: int = Field(64, ge=8, description="smallest width or height in pixels")
    image_default_width: int = Field(1024, ge=8)
    image_default_height: int = Field(1024, ge=8)
    image_default_steps: Literal[1, 2, 4, 8] = 4
    image_max_n: int = Field(4, ge=1, le=16, description="most images one request may ask for")
    image_cache_mb: float = Field(512, ge=0, description="disk kept for cached images; 0 turns the cache off")
    image_magic_prompt_engine: Literal["auto", "rules", "llm"] = Field(
        "auto", description="engine of /magic-prompt when a request names none; auto: llm when its model is "
                            "present, else rules")
    image_magic_prompt_model: str | None = Field(
        None, description="manifest key of the Qwen2-VL model the llm engine runs as a text model; default: "
                          "vita_vlm (the assistant's, so nothing more to download)")
    image_magic_prompt_timeout_s: float = Field(
        30, gt=0, description="the llm engine's deadline (a cold model load included); past it, the rules "
                              "engine answers, with a warning")
    image_magic_prompt_max_new_tokens: int = Field(96, ge=8, le=512, description="most tokens the llm engine writes")
    image_pose_max_pixels: int = Field(
        40_000_000, ge=1, description="largest pose_image, pose_reference or /pose photo in pixels (413 beyond, "
                                      "refused before decoding); DWPose runs on the face_execution_provider")

    # --- vita ---
    vita_vlm: str = Field("qwen2-vl-2b-instruct", description="manifest key of the assistant's vision-language model")
    vita_max_sessions: int = Field(2, ge=1, le=64, description="open realtime sessions; more get too_many_users")
    vita_session_timeout_s: float = Field(600, gt=0, description="idle seconds before out_time")
    vita_history_turns: int = Field(4, ge=0, le=50, description="earlier exchanges the model sees")
    vita_max_frames: int = Field(4, ge=1, le=32, description="camera frames kept per session")
    vita_frames_per_reply: int = Field(2, ge=0, le=8, description="latest frames shown to the model")
    vita_frame_gap_s: float = Field(1.0, gt=0, description="a longer gap between frames clears them (camera off)")
    vita_frame_max_pixels: int = Field(448 * 448, ge=28 * 28, description="frames are downscaled to this for the model")
    vita_max_frame_mb: float = Field(2.0, gt=0, description="larger video_frame packets are dropped")
    vita_max_utterance_s: float = Field(20, ge=1, le=120, description="longer speech is cut and answered")
    vita_max_new_tokens: int = Field(160, ge=1, le=2048)
    vita_language: str = Field("es", description="each session's language at first: heard and answered in")
    vita_languages: Annotated[list[str], NoDecode] = Field(
        ["es", "en", "pt"], description="languages a session may switch to (env: comma-separated); keep to "
                                        "those the TTS speaks")
    vita_language_switch_min_s: float = Field(
        2.0, ge=0, description="shorter utterances never change the session's language (detection is unreliable)")
    vita_language_switch_p: float = Field(
        0.8, gt=0, le=1, description="Whisper's probability a detected language needs to become the session's")
    vita_tts_model: str | None = Field(None, description="TTS model of the assistant's voice (default: "
                                                         "tts_default_model)")
    vita_voice: str | None = Field(None, description="TTS voice for replies (the TTS default when unset)")
    vita_audio_rate_limit: float = Field(1.5, gt=1, le=20, description="audio accepted per second, x real time")
    vita_audio_burst_s: float = Field(2.0, gt=0, le=30, description="audio seconds a client may send at once")
    vita_preload: bool = Field(True, description="load the assistant's models when a session opens")

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, v):
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("worker_families", "worker_job_modules", mode="before")
    @classmethod
    def _split_names(cls, v):
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("vita_languages", mode="before")
    @classmethod
    def _split_languages(cls, v):
        if isinstance(v, str):
            return [lang for lang in (p.strip() for p in v.split(",")) if lang]
        return v

    @field_validator("vita_language")
    @classmethod
    def _language_code(cls, v):
        return _whisper_code(v, "vita_language")

    @field_validator("vita_languages")
    @classmethod
    def _language_codes(cls, v):
        codes = [_whisper_code(lang, "vita_languages") for lang in v]
        if not codes:
            raise ValueError("vita_languages: name at least one language")
        return list(dict.fromkeys(codes))

    @model_validator(mode="after")
    def _session_language_is_allowed(self):
        if self.vita_language not in self.vita_languages:
            raise ValueError(f"vita_language {self.vita_language!r} must be one of vita_languages "
                             f"({', '.join(self.vita_languages)})")
        return self
    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v):
        from .proxies import parse_networks

        parse_networks(v)  # ValueError names the bad entry
        return v

    @field_validator("gpus", mode="before")
    @classmethod
    def _split_gpus(cls, v):
        if isinstance(v, str):
            if v.strip().lower() in ("", "all"):
                return None
            try:
                return [int(p) for p in v.split(",") if p.strip()]
            except ValueError:
                raise ValueError(f"expected 'all' or GPU indices separated by commas (e.g. 0,1), got {v!r}") from None
        return v

    @model_validator(mode="after")
    def _resolve_dirs(self):
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.models_dir = Path(self.models_dir or self.data_dir / "models").expanduser().resolve()
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ):
        yaml_path = _yaml_file.get() or os.environ.get("ENFOADS_CONFIG")
        sources = [init_settings, env_settings]
        if yaml_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    # Derived values: computed, never configured twice.
    @property
    def resolved_device(self) -> str:
        return device_policy.resolve_device(self.device)

    @property
    def offloader_devices(self) -> list[str]:
        return device_policy.offloader_devices(self.resolved_device, self.gpus, self.vram_devices)

    @property
    def dtype_name(self) -> str:
        return device_policy.dtype_name(self.resolved_device, self.dtype)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024**2)

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "enfoads.db"


def _whisper_code(value: str, name: str) -> str:
    from services.whisper.languages import normalize_language

    try:
        code = normalize_language(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if code is None:
        raise ValueError(f"{name}: name a language ('auto' is not one)")
    return code


def load_settings(config: str | Path | None = None, **overrides) -> Settings:
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"settings file not found: {config}")
    token = _yaml_file.set(Path(config) if config else None)
    try:
        settings = Settings(**overrides)
    finally:
        _yaml_file.reset(token)
    return settings
