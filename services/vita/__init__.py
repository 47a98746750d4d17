"""VITA: the realtime voice + camera assistant (VAD -> whisper -> Qwen2-VL -> TTS), no Flask here.

`session.Session` is one user's conversation, `manager.SessionManager` all of them (limits,
timeouts, VRAM pins); `brain.VlmBrain` the vision-language model; `ports` the protocols the
whisper and TTS services plug into.
"""
