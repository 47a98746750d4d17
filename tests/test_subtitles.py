"""Subtitle cues: balanced two-line cues, and a long segment's time shared by the length of its cues."""
import textwrap

import pytest

from services.whisper.subtitles import Cue, break_lines, cues_from_segments, to_srt, to_vtt

# Sentences where greedy wrapping (fill the first line, the rest below) and balancing differ.
BALANCED = {
    "Hola a todos y bienvenidos de nuevo a este canal de cocina casera.":
        ["Hola a todos y bienvenidos de nuevo", "a este canal de cocina casera."],
    "Hoy vamos a preparar unas empanadas de carne al horno muy fáciles.":
        ["Hoy vamos a preparar unas empanadas", "de carne al horno muy fáciles."],
    "Si te gusta este video, suscríbete y activa la campanita para más.":
        ["Si te gusta este video, suscríbete", "y activa la campanita para más."],
}
LONG = ("Esta receta la aprendí de mi abuela cuando era niño en Guadalajara, y desde entonces "
        "la preparo cada domingo para toda la familia.")


@pytest.mark.parametrize("text", list(BALANCED))
def test_two_line_cues_are_balanced_not_greedy(text):
    assert textwrap.wrap(text, 42) != BALANCED[text]  # the example tells the two apart
    assert break_lines(text) == [BALANCED[text]]


def test_balanced_split_minimises_the_longest_line():
    text = "uno dos tres cuatro cinco seis siete ocho nueve diez"
    assert textwrap.wrap(text, 30) == ["uno dos tres cuatro cinco seis", "siete ocho nueve diez"]
    assert break_lines(text, max_line_chars=30) == [["uno dos tres cuatro cinco", "seis siete ocho nueve diez"]]


def test_short_text_is_one_line_and_whitespace_is_collapsed():
    assert break_lines("  Buenos   días\n a todos  ") == [["Buenos días a todos"]]
    assert break_lines("   ") == []


def test_long_segment_splits_into_cues_within_the_limits():
    cues = break_lines(LONG)
    assert cues == [["Esta receta la aprendí de mi abuela cuando", "era niño en Guadalajara, y desde entonces"],
                    ["la preparo cada domingo", "para toda la familia."]]
    one_line = break_lines(LONG, max_line_chars=30, max_lines=1)
    assert all(len(c) == 1 and len(c[0]) <= 30 for c in one_line) and len(one_line) == 5


def test_a_word_longer_than_a_line_is_cut():
    cues = break_lines("a" * 50, max_line_chars=42)
    assert cues == [["a" * 42, "a" * 8]]


def test_cue_time_is_shared_in_proportion_to_text_length():
    cues = cues_from_segments([{"start": 10.0, "end": 20.0, "text": LONG}])
    first = 83 / (83 + 44)  # characters in the first cue's lines vs the second's
    assert [(c.start, c.end) for c in cues] == [(10.0, round(10 + 10 * first, 3)), (round(10 + 10 * first, 3), 20.0)]
    assert cues[0].lines == ("Esta receta la aprendí de mi abuela cuando", "era niño en Guadalajara, y desde entonces")


def test_three_cues_share_time_by_length():
    text = "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii"  # 9 words of 4 letters
    cues = cues_from_segments([{"start": 0.0, "end": 9.0, "text": text}], max_line_chars=9, max_lines=2)
    assert [c.lines for c in cues] == [("aaaa bbbb", "cccc dddd"), ("eeee ffff", "gggg hhhh"), ("iiii",)]
    # 18, 18 and 4 characters of 40
    assert [(c.start, c.end) for c in cues] == [(0.0, 4.05), (4.05, 8.1), (8.1, 9.0)]


def test_segments_without_text_or_time_make_no_cue():
    cues = cues_from_segments([{"start": 0, "end": 1, "text": "  "}, {"start": 1, "end": 1, "text": "nada"},
                               {"start": 1, "end": 2, "text": "algo"}])
    assert cues == [Cue(1.0, 2.0, ("algo",))]


def test_srt_and_vtt_carry_the_cues():
    cues = [Cue(0.0, 1.5, ("Hola", "mundo")), Cue(1.5, 62.25, ("adiós",))]
    srt = to_srt(cues)
    assert "00:00:00,000 --> 00:00:01,500\nHola\nmundo" in srt
    assert "00:00:01,500 --> 00:01:02,250\nadiós" in srt
    vtt = to_vtt(cues)
    assert vtt.startswith("WEBVTT") and "00:00:01.500 --> 00:01:02.250" in vtt


def test_ass_is_laid_out_in_the_videos_pixels():
    import pysubs2

    from services.whisper.subtitles import to_ass

    cues = [Cue(0.0, 1.25, ("Hola", "mundo")), Cue(2.0, 3.0, ("adiós",))]
    subs = pysubs2.SSAFile.from_string(to_ass(cues, width=1280, height=720))
    assert (subs.info["PlayResX"], subs.info["PlayResY"]) == ("1280", "720")
    assert subs.info["WrapStyle"] == "2" and subs.info["ScaledBorderAndShadow"] == "yes"
    style = subs.styles["Default"]
    assert style.fontsize == 40 and style.fontname == "DejaVu Sans"  # 720 / 18
    assert style.alignment == pysubs2.Alignment.BOTTOM_CENTER
    assert (style.marginv, style.marginl, style.marginr) == (36, 64, 64)
    assert (style.outline, style.shadow) == (40 / 14, 40 / 28) and not style.bold
    assert style.primarycolor == pysubs2.Color(255, 255, 255) and style.outlinecolor == pysubs2.Color(0, 0, 0)
    assert style.backcolor == pysubs2.Color(0, 0, 0, 128)
    assert [(e.start, e.end, e.text) for e in subs] == [(0, 1250, r"Hola\Nmundo"), (2000, 3000, "adiós")]


def test_ass_size_position_and_small_videos():
    import pysubs2

    from services.whisper.subtitles import default_font_size, to_ass

    cue = [Cue(0.0, 1.0, ("hola",))]
    for position, alignment in (("top", 8), ("middle", 5), ("bottom", 2)):
        style = pysubs2.SSAFile.from_string(to_ass(cue, width=320, height=240, position=position)).styles["Default"]
        assert style.alignment == alignment
    style = pysubs2.SSAFile.from_string(to_ass(cue, width=64, height=48, font_size=7)).styles["Default"]
    assert style.fontsize == 7 and (style.outline, style.shadow) == (1.0, 0.5) and style.marginv == 4
    assert style.marginl == 4 and style.marginr == 4
    assert [default_font_size(h) for h in (100, 216, 1080)] == [12, 12, 60]


def test_ass_text_cannot_open_override_blocks():
    import pysubs2

    from services.whisper.subtitles import to_ass

    ass = to_ass([Cue(0.0, 1.0, (r"{\b1}hola\N", "a}b{c"))], width=320, height=240)
    text = pysubs2.SSAFile.from_string(ass)[0].text
    assert text == "(\u29f5b1)hola\u29f5N\\Na)b(c"


def test_on_a_tie_the_shorter_line_goes_on_top():
    # "a www" / "b" and "a" / "www b" both have a longest line of 5: subtitles are bottom-heavy
    assert break_lines("a www b", max_line_chars=5) == [["a", "www b"]]


def test_a_single_long_word_may_make_the_top_line():
    # the best split puts one word alone on the first line
    assert break_lines("abcdefghijklmnopq ab cd ef", max_line_chars=20) == [["abcdefghijklmnopq", "ab cd ef"]]


def test_hyphenated_words_stay_whole_on_one_line():
    text = "Nuestra comida latino-americana favorita"
    assert textwrap.wrap(text, 22) != textwrap.wrap(text, 22, break_on_hyphens=False)  # the example can tell
    lines = [line for cue in break_lines(text, max_line_chars=22) for line in cue]
    assert any("latino-americana" in line.split() for line in lines) and not any(line.endswith("-") for line in lines)


def test_max_lines_reaches_the_cues():
    segment = [{"start": 0.0, "end": 6.0, "text": "aaaa bbbb cccc dddd eeee ffff"}]
    assert [c.lines for c in cues_from_segments(segment, max_line_chars=9, max_lines=3)] == [
        ("aaaa bbbb", "cccc dddd", "eeee ffff")]
    assert len(cues_from_segments(segment, max_line_chars=9, max_lines=1)) == 3


def test_a_segment_without_a_text_key_makes_no_cue():
    assert cues_from_segments([{"start": 0.0, "end": 1.0}, {"start": 1.0, "end": 2.0, "text": "sí"}]) == [
        Cue(1.0, 2.0, ("sí",))]


@pytest.mark.parametrize("start, end, kept", [
    (0.2, 0.4, True), (0.6, 0.9, True), (1.0, 1.0004, False), (0.9996, 1.0004, False), (3.0, 3.001, True)])
def test_short_segments_keep_their_cue_unless_under_a_millisecond(start, end, kept):
    cues = cues_from_segments([{"start": start, "end": end, "text": "sí"}])
    assert cues == ([Cue(round(start, 3), round(end, 3), ("sí",))] if kept else [])


def test_ass_style_numbers_are_whole_pixels():
    import pysubs2

    from services.whisper.subtitles import to_ass

    ass = to_ass([Cue(0.0, 1.0, ("hola",))], width=1010, height=250)  # margins 50.5 and 12.5 if not floored
    style = next(line for line in ass.splitlines() if line.startswith("Style: Default,"))
    fields = style.split(",")
    assert fields[-4:-1] == ["50", "50", "12"]  # MarginL, MarginR, MarginV: integers in the ASS format
    assert pysubs2.SSAFile.from_string(ass).styles["Default"].marginv == 12
