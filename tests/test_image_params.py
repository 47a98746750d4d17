"""Image request checks against the server's limits (services/image/params.py), each error naming
its field, at the edges of every limit."""
import pytest

from services.errors import InvalidInput
from services.image.params import MAX_SEED, ImageLimits, ImageRequest, build_request

LIMITS = ImageLimits(max_width=1024, max_height=768, min_side=64, max_n=4, default_width=512, default_height=256,
                     default_steps=2)


def refused(param, code=None, words=None, **kw):
    with pytest.raises(InvalidInput) as err:
        build_request(LIMITS, **{"prompt": "un gato", **kw})
    assert err.value.param == param
    if code:
        assert err.value.code == code
    if words:
        assert words in err.value.message
    return err.value


def test_defaults_come_from_the_limits_and_the_prompt_is_trimmed():
    req = build_request(LIMITS, prompt="  un gato  ", seed=7)
    assert (req.prompt, req.width, req.height, req.steps, req.n, req.seed) == ("un gato", 512, 256, 2, 1, 7)
    assert req.output_format == "png" and req.negative_prompt == "" and req.warnings == ()


def test_sizes_at_the_edges():
    assert build_request(LIMITS, prompt="x", width=64, height=64, seed=0).width == 64
    req = build_request(LIMITS, prompt="x", width=1024, height=768, seed=0)
    assert (req.width, req.height) == (1024, 768)
    refused("width", "invalid_size", "between 64 and 1024 pixels (got 56)", width=56)
    refused("width", "invalid_size", "(got 1032)", width=1032)
    refused("height", "invalid_size", "between 64 and 768 pixels (got 776)", height=776)
    refused("height", "invalid_size", "multiple of 8 (got 100)", height=100)
    refused("width", "invalid_size", "width must be a multiple of 8 (got 65)", width=65)


def test_the_openai_size_field_is_named_in_size_errors():
    refused("size", "invalid_size", "size must be between", width=2048, height=64, size_param="size")
    refused("size", "invalid_size", height=2048, width=64, size_param="size")


def test_steps_are_one_of_the_lightning_checkpoints():
    for steps in (1, 2, 4, 8):
        assert build_request(LIMITS, prompt="x", steps=steps, seed=0).steps == steps
    for steps in (0, 3, 16):
        refused("steps", "invalid_steps", f"steps must be one of 1, 2, 4, 8 (got {steps})", steps=steps)


def test_n_between_one_and_the_limit():
    assert build_request(LIMITS, prompt="x", n=4, seed=0).n == 4
    refused("n", "invalid_n", "n must be between 1 and 4 (got 5)", n=5)
    refused("n", "invalid_n", n=0)


def test_seed_range_and_drawn_seed():
    assert build_request(LIMITS, prompt="x", seed=0).seed == 0
    assert build_request(LIMITS, prompt="x", seed=MAX_SEED).seed == MAX_SEED == 2**32 - 1
    refused("seed", "invalid_seed", f"between 0 and {MAX_SEED} (got -1)", seed=-1)
    refused("seed", "invalid_seed", seed=MAX_SEED + 1)
    drawn = {build_request(LIMITS, prompt="x").seed for _ in range(8)}
    assert len(drawn) > 1 and all(0 <= s <= MAX_SEED for s in drawn)


def test_formats_and_empty_prompts():
    for fmt in ("png", "jpeg", "webp"):
        assert build_request(LIMITS, prompt="x", output_format=fmt, seed=0).output_format == fmt
    refused("output_format", "invalid_format", "one of png, jpeg, webp (got 'gif')", output_format="gif")
    assert refused("prompt", "empty_prompt", prompt="   ").message == "prompt must not be empty"
    refused("prompt", "empty_prompt", prompt=None)


def test_negative_prompt_is_kept_with_a_warning():
    req = build_request(LIMITS, prompt="x", negative_prompt="  borroso ", seed=0)
    assert req.negative_prompt == "borroso"
    assert req.warnings == ("negative_prompt is ignored: SDXL-Lightning runs without classifier-free guidance "
                            "(guidance_scale=0)",)
    assert build_request(LIMITS, prompt="x", negative_prompt="   ", seed=0).warnings == ()


def test_one_seed_per_image_wrapping_at_the_end_of_the_range():
    req = build_request(LIMITS, prompt="x", n=3, seed=MAX_SEED - 1)
    assert req.seeds() == [MAX_SEED - 1, MAX_SEED, 0]
    assert build_request(LIMITS, prompt="x", n=1, seed=5).seeds() == [5]


def test_params_round_trip_through_the_job_store():
    req = build_request(LIMITS, prompt="x", n=2, seed=9, negative_prompt="no", output_format="webp")
    params = req.to_params()
    assert params["warnings"] == list(req.warnings) and isinstance(params["warnings"], list)
    assert ImageRequest.from_params(params) == req
    assert ImageRequest.from_params({k: v for k, v in params.items() if k != "warnings"}).warnings == ()


def test_size_check_names_width_and_height_by_default():
    for (w, h), param in (((100, 64), "width"), ((64, 100), "height"), ((2048, 64), "width"), ((64, 2048), "height")):
        with pytest.raises(InvalidInput) as err:
            LIMITS.check_size(w, h)
        assert err.value.param == param and err.value.message.startswith(param + " must be")


def test_pose_fields_and_control_scale():
    req = build_request(LIMITS, prompt="x", seed=0)
    assert (req.pose_source, req.pose_file, req.control_scale) == ("", "", 0.8)
    req = build_request(LIMITS, prompt="x", seed=0, pose_image="/u/a.png", control_scale=2)
    assert (req.pose_source, req.pose_file, req.control_scale, req.warnings) == ("pose_image", "/u/a.png", 2.0, ())
    req = build_request(LIMITS, prompt="x", seed=0, pose_reference="/u/b.jpg", control_scale=0)
    assert (req.pose_source, req.pose_file, req.control_scale) == ("pose_reference", "/u/b.jpg", 0.0)
    assert ImageRequest.from_params(req.to_params()) == req
    refused("control_scale", "invalid_control_scale", "between 0 and 2 (got 2.01)", pose_image="/a", control_scale=2.01)
    refused("control_scale", "invalid_control_scale", "(got -0.5)", pose_image="/a", control_scale=-0.5)
    err = refused("pose_reference", "invalid_parameter", pose_image="/a", pose_reference="/b")
    assert err.message == "send either pose_image (a skeleton) or pose_reference (a photo), not both"
    req = build_request(LIMITS, prompt="x", seed=0, control_scale=1.0)
    assert req.pose_source == "" and req.warnings == ("control_scale is ignored without pose_image or pose_reference",)
