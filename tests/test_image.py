"""Image family through the HTTP API, on the tiny random-weight SDXL-Lightning the smoke builder writes."""
from __future__ import annotations

import base64
import io
import threading

import pytest
import requests
from PIL import Image

from tests.conftest import API_KEY, job_events

H = {"Authorization": f"Bearer {API_KEY}"}
ASYNC = {**H, "Prefer": "respond-async"}


@pytest.fixture
def models(smoke_models):
    return smoke_models("image")


@pytest.fixture
def settings_for(make_settings, models):
    def make(**overrides):
        # generous wait: on a busy 2-core CI box a sync request must not turn into a 202
        return make_settings(**{"models_dir": models, "job_wait_seconds": 120, **overrides})

    return make


@pytest.fixture
def server(live_server, settings_for):
    return live_server(settings_for())


@pytest.fixture
def pipeline_calls(monkeypatch):
    """Counts real pipeline runs (the pipeline still runs: this only watches)."""
    from diffusers import StableDiffusionXLPipeline

    calls = []
    original = StableDiffusionXLPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("num_inference_steps"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionXLPipeline, "__call__", spy)
    return calls


def generate(server, body, headers=H, path="/generate-image"):
    return requests.post(f"{server.url}{path}", json=body, headers=headers, timeout=180)


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def wait_job(server, wait_for, job_id, status):
    return wait_for(lambda: (j := requests.get(f"{server.url}/jobs/{job_id}", headers=H, timeout=10).json())
                    ["status"] == status and j, timeout=120)


# --------------------------------------------------------------------------- images out

@pytest.mark.parametrize("fmt,width,height,pil", [("png", 64, 64, "PNG"), ("jpeg", 128, 64, "JPEG"),
                                                  ("webp", 64, 96, "WEBP")])
def test_image_has_the_requested_size_and_format(server, fmt, width, height, pil):
    r = generate(server, {"prompt": "zapatillas rojas", "width": width, "height": height, "output_format": fmt,
                          "seed": 11})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == f"image/{fmt}"
    assert r.headers["X-Seed"] == "11" and r.headers["X-Model"] == "sdxl-lightning-4step"
    img = decode(r.content)
    assert img.format == pil and img.size == (width, height) and img.mode == "RGB"


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(live_server, settings_for, pipeline_calls):
    server = live_server(settings_for(image_cache_mb=0))  # no cache: really runs twice
    body = {"prompt": "a cup of coffee", "width": 64, "height": 64, "seed": 1234}
    first, second = generate(server, body), generate(server, body)
    other = generate(server, {**body, "seed": 1235})
    assert len(pipeline_calls) == 3
    assert first.content == second.content != other.content
    assert second.headers["X-Cache"] == "miss"


def test_cache_hit_returns_the_stored_image_without_the_pipeline(server, pipeline_calls):
    body = {"prompt": "a watch on marble", "width": 64, "height": 64, "seed": 99, "steps": 2}
    first = generate(server, body)
    assert first.headers["X-Cache"] == "miss" and pipeline_calls == [2]
    again = generate(server, body)
    assert again.status_code == 200 and again.headers["X-Cache"] == "hit"
    assert again.content == first.content
    assert pipeline_calls == [2]  # the pipeline did not run for the hit
    generate(server, {**body, "output_format": "webp"})  # another format is another entry
    assert pipeline_calls == [2, 2]


def test_random_seed_is_returned_and_reproduces_the_image(server):
    r = generate(server, {"prompt": "a lamp", "width": 64, "height": 64, "response_format": "url", "n": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    seeds = [d["seed"] for d in data["data"]]
    assert seeds[1] == (seeds[0] + 1) % 2**32 and all(d["cached"] is False for d in data["data"])
    assert data["steps"] == 4 and data["guidance_scale"] == 0.0 and data["width"] == 64
    url = data["data"][1]["url"]
    assert url.startswith(server.url) and requests.get(url, timeout=10).status_code == 401  # the key is needed
    second = requests.get(url, headers=H, timeout=10).content
    again = generate(server, {"prompt": "a lamp", "width": 64, "height": 64, "seed": seeds[1]})
    assert again.content == second


def test_b64_json_response(server):
    r = generate(server, {"prompt": "a beach", "width": 64, "height": 64, "n": 3, "seed": 5,
                          "response_format": "b64_json", "output_format": "jpeg"})
    data = r.json()
    assert [d["seed"] for d in data["data"]] == [5, 6, 7]
    images = [decode(base64.b64decode(d["b64_json"])) for d in data["data"]]
    assert all(img.format == "JPEG" and img.size == (64, 64) for img in images)
    assert data["warnings"] == []


def test_async_request_runs_as_a_job_with_output_files(server, wait_for):
    r = generate(server, {"prompt": "a car", "width": 64, "height": 64, "seed": 3, "response_format": "url"},
                 headers=ASYNC)
    assert r.status_code == 202
    job = wait_job(server, wait_for, r.json()["job_id"], "succeeded")
    assert job["result"]["images"][0]["seed"] == 3
    f = requests.get(f"{server.url}/jobs/{job['id']}/files/image-1.png", headers=H, timeout=10)
    assert decode(f.content).size == (64, 64)


# --------------------------------------------------------------------------- warnings

def test_long_prompt_is_generated_with_a_truncation_warning(server):
    prompt = "a very detailed photo of a red sneaker on a sunny beach " * 8
    r = generate(server, {"prompt": prompt, "width": 64, "height": 64, "response_format": "url"})
    assert r.status_code == 200
    warnings = r.json()["warnings"]
    assert len(warnings) == 1 and "truncated" in warnings[0] and "77" in warnings[0]
    short = generate(server, {"prompt": "a red sneaker", "width": 64, "height": 64, "response_format": "url"})
    assert short.json()["warnings"] == []
    spanish = "zapatillas rojas en la playa al atardecer, camión, señora con canción\n" * 6
    r = generate(server, {"prompt": spanish, "width": 64, "height": 64})  # the warning travels in a header
    assert r.status_code == 200 and "truncated" in r.headers["X-Warning"]


def test_negative_prompt_is_accepted_with_a_warning(server):
    r = generate(server, {"prompt": "a shoe", "negative_prompt": "blurry", "width": 64, "height": 64,
                          "response_format": "url"})
    assert r.status_code == 200
    assert any("negative_prompt is ignored" in w and "guidance" in w for w in r.json()["warnings"])
    r = generate(server, {"prompt": "a shoe", "negative_prompt": "blurry", "width": 64, "height": 64})
    assert "negative_prompt is ignored" in r.headers["X-Warning"]


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("body,param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "a", "width": 100}, "width"),
    ({"prompt": "a", "height": 60}, "height"),
    ({"prompt": "a", "width": 1032}, "width"),
    ({"prompt": "a", "height": 2048}, "height"),
    ({"prompt": "a", "width": 32}, "width"),
    ({"prompt": "a", "steps": 3}, "steps"),
    ({"prompt": "a", "steps": 0}, "steps"),
    ({"prompt": "a", "n": 5, "response_format": "url"}, "n"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "n": 2}, "response_format"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "seed": 2**32}, "seed"),
    ({"prompt": "a", "output_format": "gif"}, "output_format"),
    ({"prompt": "a", "response_format": "html"}, "response_format"),
    ({"prompt": "a", "guidance_scale": 7}, "guidance_scale"),
])
def test_bad_input_is_400_naming_the_field(server, pipeline_calls, body, param):
    r = generate(server, {"width": 64, "height": 64, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert pipeline_calls == []


@pytest.mark.parametrize("body,param", [
    ({"prompt": "a", "size": "64x60"}, "size"),
    ({"prompt": "a", "size": "4096x4096"}, "size"),
    ({"prompt": "a", "size": "big"}, "size"),
    ({"prompt": "a", "size": "64x64", "n": 9}, "n"),
    ({"prompt": "a", "size": "64x64", "model": "midjourney"}, "model"),
    ({"prompt": "a", "size": "64x64", "model": "sdxl-lightning-2step", "steps": 4}, "steps"),
    ({"prompt": "a", "size": "64x64", "response_format": "png"}, "response_format"),
    ({"prompt": "a", "size": "64x64", "stream": True}, "stream"),
    ({"prompt": "", "size": "64x64"}, "prompt"),
])
def test_openai_route_bad_input_is_400_naming_the_field(server, body, param):
    r = generate(server, body, path="/v1/images/generations")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_missing_model_files_are_503_naming_the_prefetch_command(live_server, settings_for, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    server = live_server(settings_for(models_dir=empty))
    r = generate(server, {"prompt": "a shoe", "width": 64, "height": 64})
    assert r.status_code == 503
    err = r.json()["error"]
    assert "python -m prefetch --smoke" in err["message"] and err["code"] == "model_unavailable"
    models = requests.get(f"{server.url}/v1/models", headers=H, timeout=10).json()["data"]
    assert {m["id"]: m["available"] for m in models if m["family"] == "image"} == {
        "sdxl-lightning-1step": False, "sdxl-lightning-2step": False, "sdxl-lightning-4step": False,
        "sdxl-lightning-8step": False, "controlnet-openpose-sdxl": False, "dwpose": False,
        "realesrgan-x2plus": False, "realesrgan-x4plus": False}


def test_one_missing_step_checkpoint_is_503_for_that_step_count_only(live_server, settings_for, models, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(models, partial, ignore=shutil.ignore_patterns("sdxl-lightning-unet-8step"))
    server = live_server(settings_for(models_dir=partial))
    r = generate(server, {"prompt": "a shoe", "width": 64, "height": 64, "steps": 8})
    assert r.status_code == 503 and "sdxl-lightning-unet-8step" in r.json()["error"]["message"]
    assert generate(server, {"prompt": "a shoe", "width": 64, "height": 64, "steps": 2}).status_code == 200


# --------------------------------------------------------------------------- progress and cancel

@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_progress_events_arrive_in_order(server, wait_for, transports):
    with job_events(server.url, transports=transports) as events:
        r = generate(server, {"prompt": "a mug", "width": 64, "height": 64, "n": 2, "steps": 4,
                              "response_format": "url"})
        job_id = r.json()["job_id"]
        wait_for(lambda: any(e["id"] == job_id and e["status"] == "succeeded" for e in events), timeout=60)
    mine = [e for e in events if e["id"] == job_id]
    assert mine[0]["status"] == "queued" and mine[-1]["status"] == "succeeded"
    running = [e for e in mine if e["status"] == "running" and e["progress"] > 0]
    progress = [e["progress"] for e in running]
    # 2 images x (4 denoising steps + the decode) = 10 events
    assert progress == sorted(progress) and len(progress) == 10 and progress[-1] == 1.0
    messages = [e["message"] for e in running]
    assert messages[:4] == [f"image 1/2: step {i}/4" for i in range(1, 5)]
    assert messages[4] == "image 1/2 done" and messages[-1] == "image 2/2 done"


def test_cancel_mid_run_leaves_no_output_and_no_cache_entry(live_server, settings_for, monkeypatch, wait_for):
    from diffusers import UNet2DConditionModel

    entered, release = threading.Event(), threading.Event()
    forward = UNet2DConditionModel.forward
    calls = []

    def gated(self, *args, **kwargs):  # holds the second denoising step until the test has cancelled
        calls.append(1)
        if len(calls) == 2:
            entered.set()
            release.wait(20)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", gated)
    settings = settings_for()
    server = live_server(settings)
    try:
        r = generate(server, {"prompt": "a bag", "width": 64, "height": 64, "seed": 1, "steps": 4},
                     headers=ASYNC)
        job_id = r.json()["job_id"]
        assert entered.wait(20)
        assert requests.delete(f"{server.url}/jobs/{job_id}", headers=H, timeout=10).status_code == 202
    finally:
        release.set()
    job = wait_job(server, wait_for, job_id, "cancelled")
    assert job["result"] is None and len(calls) == 2  # stopped between steps
    assert not (settings.outputs_dir / job_id).exists()
    cache = settings.data_dir / "cache" / "images"
    assert not cache.exists() or not any(cache.iterdir())


# --------------------------------------------------------------------------- the Lightning loading path

def test_the_lightning_path_is_the_one_that_runs(server, models):
    """UNet weights from ByteDance's separate checkpoint per step count, trailing Euler, fp16-fix VAE."""
    import torch
    from safetensors.torch import load_file

    assert not list((models / "sdxl-base" / "unet").glob("*.safetensors"))  # base ships no UNet weights
    vram = server.app.extensions["enfoads"].vram

    def check(steps, filename, timesteps, prediction):
        r = generate(server, {"prompt": "a ring", "width": 64, "height": 64, "steps": steps})
        assert r.status_code == 200 and r.headers["X-Model"] == f"sdxl-lightning-{steps}step"
        with vram.acquire("sdxl-lightning") as lp:
            pipe = lp.pipe
            scheduler = pipe.scheduler
            assert type(scheduler).__name__ == "EulerDiscreteScheduler"
            assert scheduler.config.timestep_spacing == "trailing"
            assert scheduler.config.prediction_type == prediction
            assert [int(t) for t in scheduler.timesteps] == timesteps
            state = load_file(str(models / f"sdxl-lightning-unet-{steps}step" / filename))
            unet = pipe.unet.state_dict()
            assert set(state) == set(unet)
            assert all(torch.equal(unet[k], state[k].to(unet[k].dtype)) for k in state)
            assert pipe.vae.config.force_upcast is False

    check(4, "sdxl_lightning_4step_unet.safetensors", [999, 749, 499, 249], "epsilon")
    check(2, "sdxl_lightning_2step_unet.safetensors", [999, 499], "epsilon")
    check(8, "sdxl_lightning_8step_unet.safetensors", [999, 874, 749, 624, 499, 374, 249, 124], "epsilon")
    check(1, "sdxl_lightning_1step_unet_x0.safetensors", [999], "sample")
    entry = next(m for m in vram.snapshot()["models"] if m["name"] == "sdxl-lightning")
    assert entry["loads"] == 1  # step switches swapped weights, no reload


# --------------------------------------------------------------------------- OpenAI images API

def test_openai_sdk_images_generate(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=180)
    res = client.images.generate(prompt="una botella de perfume", n=2, size="64x64", response_format="b64_json",
                                 extra_body={"seed": 42})
    assert len(res.data) == 2
    for item in res.data:
        img = decode(base64.b64decode(item.b64_json))
        assert img.size == (64, 64) and img.format == "PNG"
        assert item.revised_prompt == "una botella de perfume"
    assert res.created > 0

    res = client.images.generate(prompt="a red car", model="dall-e-3", size="128x64", quality="standard")
    url = res.data[0].url
    assert decode(requests.get(url, headers=H, timeout=10).content).size == (128, 64)
    raw = res.model_dump()
    assert raw["warnings"] == ["ignored parameters: quality"] and raw["model"] == "sdxl-lightning-4step"


def test_openai_route_model_names_pick_the_step_count(server, pipeline_calls):
    r = generate(server, {"prompt": "a tree", "size": "64x64", "model": "sdxl-lightning-2step"},
                 path="/v1/images/generations")
    assert r.status_code == 200 and r.json()["model"] == "sdxl-lightning-2step"
    assert pipeline_calls == [2]


def test_openapi_documents_the_image_routes(server):
    spec = requests.get(f"{server.url}/openapi.json", headers=H, timeout=10).json()
    assert {"/generate-image", "/v1/images/generations", "/magic-prompt"} <= set(spec["paths"])
    schema = spec["components"]["schemas"]["GenerateImageBody"]["properties"]
    assert schema["steps"]["anyOf"][0]["enum"] == [1, 2, 4, 8]


def test_fp16_path_as_on_a_t4(live_server, settings_for, pipeline_calls):
    """dtype float16 (the T4 policy): every component in fp16 and the fp16-fix VAE not upcast to fp32."""
    import torch

    server = live_server(settings_for(dtype="float16"))
    r = generate(server, {"prompt": "a red shoe", "width": 64, "height": 64, "seed": 3})
    assert r.status_code == 200 and decode(r.content).size == (64, 64)
    with server.app.extensions["enfoads"].vram.acquire("sdxl-lightning") as lp:
        pipe = lp.pipe
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.float16}
        assert pipe.vae.config.force_upcast is False


def test_urls_behind_the_tunnel_carry_the_public_scheme_and_host(server):
    headers = {**H, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc.ngrok-free.app"}
    r = generate(server, {"prompt": "a lamp", "width": 64, "height": 64, "seed": 1, "response_format": "url"},
                 headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["url"].startswith("https://abc.ngrok-free.app/jobs/")


def test_a_forwarded_host_from_a_client_is_not_echoed(live_server, settings_for):
    # loopback is not a trusted proxy here: the request comes from a client, as through no tunnel
    server = live_server(settings_for(trusted_proxies=["192.0.2.1"]))
    headers = {**H, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    r = generate(server, {"prompt": "a lamp", "width": 64, "height": 64, "seed": 1, "response_format": "url"},
                 headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["url"].startswith(f"{server.url}/jobs/")
