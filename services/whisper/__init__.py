"""Speech to text (faster-whisper) and subtitles: transcription, translation, SRT/VTT, subtitled video.

- transcriber.py: `WhisperService` (models through the VRAM offloader; file and array input)
- timeline.py: timestamps clamped to the media and monotonic
- subtitles.py: cues with line breaking; SRT/VTT/ASS through pysubs2
- formats.py: the response formats (json, text, srt, vtt, verbose_json) and output files
- video.py: subtitles burned into a video or muxed as a soft track (ffmpeg from imageio-ffmpeg)
- smoke.py: the tiny CTranslate2 model tests and the smoke profile use
"""
from .formats import RESPONSE_FORMATS, render, write_all
from .languages import LANGUAGES, normalize_language
from .subtitles import Cue, cues_from_segments, to_srt, to_vtt
from .transcriber import OPENAI_MODEL, SIZES, TranscribeOptions, WhisperService
from .video import MODES, SubtitleStyle, subtitle_video

__all__ = [
    "RESPONSE_FORMATS", "render", "write_all", "LANGUAGES", "normalize_language", "Cue", "cues_from_segments",
    "to_srt", "to_vtt", "OPENAI_MODEL", "SIZES", "TranscribeOptions", "WhisperService", "MODES", "SubtitleStyle",
    "subtitle_video",
]
