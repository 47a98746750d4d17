"""/subtitle-video: subtitles burned into the picture or muxed as a soft track; mp4 out with the
original audio and duration; SRT/VTT alongside."""
import numpy as np
import pysubs2
import pytest
import requests

from services import media
from services.whisper import Cue, SubtitleStyle, subtitle_video
from tests import whisper_media as wm
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("whisper-video")
    speech = wm.espeak(wm.SPEECH_ES, d / "speech.wav")
    return wm.video_with_audio(speech, d / "clip.mp4")


@pytest.fixture
def server(live_server, make_settings, smoke_models):
    return live_server(make_settings(models_dir=smoke_models("whisper"), whisper_beam_size=1))


def post(server, path, data):
    return requests.post(f"{server.url}/subtitle-video", headers=H, timeout=120,
                         files={"file": (path.name, path.read_bytes())}, data={"temperature": "0", **data})


def fetch(server, url, dest):
    r = requests.get(server.url + url, headers=H, timeout=30)
    assert r.status_code == 200
    dest.write_bytes(r.content)
    return dest


def same_audio(a, b):
    x, y = media.decode_audio(a), media.decode_audio(b)
    n = min(x.size, y.size)
    assert abs(x.size - y.size) < 0.05 * 16000
    return np.allclose(x[:n], y[:n], atol=1e-3)


def test_burned_subtitles_change_the_picture_where_they_show(server, clip, tmp_path):
    r = post(server, clip, {"mode": "burn", "font_size": "28"})
    assert r.status_code == 200, r.text
    body = r.json()
    out = fetch(server, body["video"], tmp_path / "out.mp4")
    src_info, out_info = wm.streams(clip), wm.streams(out)
    assert out_info["video"] == ["h264"] and out_info["audio"] == ["aac"] and out_info["subtitle"] == []
    assert abs(out_info["duration"] - src_info["duration"]) < 0.1
    assert same_audio(clip, out)  # AAC copied, not re-encoded

    subs = pysubs2.SSAFile.from_string(body["srt"], format_="srt")
    assert len(subs) == body["cues"] >= 1
    assert pysubs2.SSAFile.from_string(body["vtt"], format_="vtt")[0].plaintext == subs[0].plaintext
    last = 0
    for ev in subs:
        assert last <= ev.start <= ev.end <= src_info["duration"] * 1000
        last = ev.end
    shown = (subs[0].start + subs[0].end) / 2000
    before, after = wm.frame_at(clip, shown), wm.frame_at(out, shown)
    h = before.shape[0]
    bottom = np.abs(after[2 * h // 3:] - before[2 * h // 3:]).max()
    top = np.abs(after[: h // 3] - before[: h // 3]).mean()
    assert bottom > 100  # white text with a black outline on gray
    assert top < 4  # the rest of the picture is untouched (up to re-encoding)


def test_soft_subtitles_are_a_track_and_the_video_is_copied(server, clip, tmp_path):
    r = post(server, clip, {"mode": "soft"})
    assert r.status_code == 200, r.text
    out = fetch(server, r.json()["video"], tmp_path / "soft.mp4")
    info = wm.streams(out)
    assert info["subtitle"] == ["mov_text"] and info["video"] == ["h264"]
    assert abs(info["duration"] - wm.streams(clip)["duration"]) < 0.1
    assert same_audio(clip, out)
    t = 1.0
    assert np.abs(wm.frame_at(out, t) - wm.frame_at(clip, t)).max() == 0  # video stream copied as is


def test_video_can_come_back_as_the_response_body(server, clip, tmp_path):
    r = post(server, clip, {"response_format": "video", "mode": "soft"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4"
    (tmp_path / "v.mp4").write_bytes(r.content)
    assert wm.streams(tmp_path / "v.mp4")["subtitle"] == ["mov_text"]


def test_webm_in_gives_mp4_out_with_its_opus_audio_kept(server, clip, tmp_path):
    webm = wm.convert(clip, tmp_path / "clip.webm", "-c:v", "libvpx", "-b:v", "200k", "-c:a", "libopus")
    r = post(server, webm, {"mode": "soft"})
    assert r.status_code == 200, r.text
    info = wm.streams(fetch(server, r.json()["video"], tmp_path / "from-webm.mp4"))
    # VP8 can't go into mp4: re-encoded to h264; Opus can: copied
    assert info["video"] == ["h264"] and info["audio"] == ["opus"] and info["subtitle"] == ["mov_text"]
    assert abs(info["duration"] - wm.streams(webm)["duration"]) < 0.1


def test_audio_only_or_bad_options_are_refused(server, tmp_path):
    wav = wm.espeak("hola", tmp_path / "hola.wav")
    r = post(server, wav, {})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_video"
    r = post(server, wav, {"position": "left"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "position"
    r = post(server, wav, {"mode": "hard"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "mode"


def test_burning_known_cues_odd_sized_video(tmp_path):
    # Odd dimensions (x264 needs even ones) and a cue at the top: only the top band changes.
    speech = wm.espeak("uno dos tres", tmp_path / "s.wav")
    src = wm.video_with_audio(speech, tmp_path / "odd.mp4", size="321x241", pix_fmt="yuv444p")
    info = media.probe(src)
    out = subtitle_video(src, tmp_path / "burned.mp4", [Cue(0.2, 0.8, ("Hola mundo",))], info=info,
                         style=SubtitleStyle(font_size=30, position="top"))
    inside, outside = wm.frame_at(out, 0.5), wm.frame_at(out, info.duration - 0.2)
    h = inside.shape[0]
    assert inside.shape[:2] == (240, 320)
    assert np.abs(inside[: h // 3] - wm.frame_at(src, 0.5)[:240, :320][: h // 3]).max() > 100
    assert np.abs(outside - wm.frame_at(src, info.duration - 0.2)[:240, :320]).mean() < 4


def test_a_raw_stream_without_duration_is_400(server, tmp_path):
    raw = tmp_path / "t.h264"
    wm.ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", "20", "-c:v", "libx264", "-f", "h264", str(raw))
    r = post(server, raw, {})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_duration"


def test_frames_over_the_size_limit_are_413(live_server, make_settings, smoke_models, clip):
    server = live_server(make_settings(models_dir=smoke_models("whisper"), whisper_video_max_pixels=100 * 100))
    r = post(server, clip, {})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "video_too_large" and "320x240" in err["message"] and "10,000 pixels" in err["message"]
