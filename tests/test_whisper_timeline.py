"""normalize(): the segment and word times every transcript leaves the service with, on hand-made
segments shaped like what Whisper gets wrong (times past the end, overlaps, out of order)."""
import copy

from services.whisper.timeline import normalize


def seg(start, end, text="x", words=None, **extra):
    s = {"start": start, "end": end, "text": text, **extra}
    if words is not None:
        s["words"] = [{"start": a, "end": b, "word": w} for a, b, w in words]
    return s


def times(segments):
    return [(s["start"], s["end"]) for s in segments]


def word_times(segment):
    return [(w["start"], w["end"]) for w in segment["words"]]


def test_segments_starting_at_or_past_the_end_are_dropped():
    out = normalize([seg(0, 2, "a"), seg(2, 4, "b"), seg(4.0, 5, "invented"), seg(6, 7, "also")], 4.0)
    assert [s["text"] for s in out] == ["a", "b"]
    assert times(out) == [(0, 2), (2, 4)]


def test_end_past_the_audio_is_clamped_to_it():
    out = normalize([seg(1, 2), seg(2.5, 31.0)], 10.0)
    assert times(out) == [(1, 2), (2.5, 10.0)]


def test_duration_is_floored_to_milliseconds_so_rounding_never_passes_the_end():
    out = normalize([seg(0, 9.0)], 3.0009)
    assert times(out) == [(0, 3.0)]
    out = normalize([seg(2.9999, 9.0)], 3.0009)  # starts before the floored end: kept, then clamped
    assert times(out) == [(3.0, 3.0)]


def test_overlapping_segment_starts_where_the_previous_ended():
    out = normalize([seg(0, 3), seg(2, 5), seg(4, 4.5)], 10)
    assert times(out) == [(0, 3), (3, 5), (5, 5)]


def test_out_of_order_segments_become_monotonic():
    out = normalize([seg(5, 6, "late"), seg(1, 2, "early")], 10)
    assert times(out) == [(5, 6), (6, 6)]
    assert [s["text"] for s in out] == ["late", "early"]


def test_end_before_start_and_negative_times():
    out = normalize([seg(-1.0, -0.5), seg(2, 1)], 10)
    assert times(out) == [(0, 0), (2, 2)]


def test_times_rounded_to_milliseconds():
    out = normalize([seg(0.12345, 1.98765)], 10)
    assert times(out) == [(0.123, 1.988)]


def test_ids_follow_the_kept_segments_and_other_fields_survive():
    out = normalize([seg(0, 1, id=7, avg_logprob=-0.2), seg(1, 2, id=3), seg(50, 60, id=9)], 5)
    assert [s["id"] for s in out] == [0, 1]
    assert out[0]["avg_logprob"] == -0.2


def test_words_are_kept_inside_their_segment():
    s = seg(1.0, 3.0, words=[(0.5, 1.2, "antes"), (1.2, 2.0, "dentro"), (2.5, 3.7, "después"), (3.8, 4.0, "fuera")])
    out = normalize([s], 10)
    assert word_times(out[0]) == [(1.0, 1.2), (1.2, 2.0), (2.5, 3.0), (3.0, 3.0)]
    assert [w["word"] for w in out[0]["words"]] == ["antes", "dentro", "después", "fuera"]


def test_words_of_a_segment_clamped_at_the_audio_end_are_clamped_too():
    s = seg(8.0, 12.0, words=[(8.0, 9.5, "a"), (9.5, 11.0, "b")])
    out = normalize([s], 10.0)
    assert times(out) == [(8.0, 10.0)]
    assert word_times(out[0]) == [(8.0, 9.5), (9.5, 10.0)]


def test_words_follow_a_segment_moved_by_an_overlap():
    first = seg(0.0, 2.0, words=[(0.0, 2.0, "uno")])
    second = seg(1.5, 3.0, words=[(1.5, 1.8, "dos"), (1.8, 2.6, "tres")])
    out = normalize([first, second], 10)
    assert times(out) == [(0, 2), (2, 3)]
    assert word_times(out[1]) == [(2.0, 2.0), (2.0, 2.6)]


def test_overlapping_and_out_of_order_words_become_monotonic():
    s = seg(0, 5, words=[(1.0, 2.0, "a"), (1.5, 2.5, "b"), (0.5, 0.8, "c"), (3.0, 2.9, "d")])
    out = normalize([s], 10)
    assert word_times(out[0]) == [(1.0, 2.0), (2.0, 2.5), (2.5, 2.5), (3.0, 3.0)]


def test_segments_without_words_stay_without_words():
    out = normalize([seg(0, 1), {**seg(1, 2), "words": None}], 10)
    assert "words" not in out[0] and out[1]["words"] is None


def test_input_is_not_changed():
    segments = [seg(0, 12, words=[(0, 12, "a")]), seg(11, 14)]
    before = copy.deepcopy(segments)
    normalize(segments, 10)
    assert segments == before


def test_no_audio_means_no_segments():
    assert normalize([seg(0, 1)], 0) == []
    assert normalize([seg(0, 1)], -3) == []
    assert normalize([], 10) == []
