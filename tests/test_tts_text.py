"""Long text -> TTS chunks: whole sentences packed up to the chunk size, long sentences cut at spaces."""
from services.tts.text import chunk_text, sentences

# sentences of 16, 24, 14 and 16 characters
TEXT = "¿Cómo estás hoy? Mañana vamos al mercado. Compramos pan. ¿Vienes conmigo?"


def test_sentences_follow_spanish_punctuation_and_collapse_whitespace():
    assert sentences("  ¿Cómo\n estás   hoy?  Mañana vamos al mercado.\t¿Vienes conmigo?  ", "es") == [
        "¿Cómo estás hoy?", "Mañana vamos al mercado.", "¿Vienes conmigo?"]
    assert sentences(" \n\t ", "es") == [] and sentences("", "es") == []


def test_languages_pysbd_does_not_know_use_the_english_rules():
    assert sentences("Bom dia. Tudo bem? Sim!", "pt") == ["Bom dia.", "Tudo bem?", "Sim!"]


def test_whole_sentences_are_packed_up_to_the_chunk_size():
    assert chunk_text(TEXT, "es", 1000) == [TEXT]
    assert chunk_text(TEXT, "es", 41) == ["¿Cómo estás hoy? Mañana vamos al mercado.",  # exactly 41
                                          "Compramos pan. ¿Vienes conmigo?"]
    assert chunk_text(TEXT, "es", 40) == ["¿Cómo estás hoy?", "Mañana vamos al mercado. Compramos pan.",
                                          "¿Vienes conmigo?"]


def test_a_sentence_longer_than_the_chunk_is_cut_at_the_last_space():
    long = "Esta es una frase muy larga que no cabe entera en un solo fragmento de audio."
    chunks = chunk_text(long, "es", 30)
    assert chunks == ["Esta es una frase muy larga", "que no cabe entera en un solo", "fragmento de audio."]
    assert all(len(c) <= 30 for c in chunks) and " ".join(chunks) == long
    # the pieces of a cut sentence pack with the next sentence like any other
    assert chunk_text("Uno dos tres cuatro cinco. Seis.", "es", 12) == ["Uno dos tres", "cuatro", "cinco. Seis."]
    assert chunk_text("Uno dos tres cuatro. Seis.", "es", 14) == ["Uno dos tres", "cuatro. Seis."]


def test_a_word_longer_than_the_chunk_is_cut_where_it_must():
    assert chunk_text("a" * 25 + " fin.", "es", 10) == ["a" * 10, "a" * 10, "aaaaa fin."]


def test_empty_text_gives_no_chunks():
    assert chunk_text("   ", "es", 100) == []


def test_the_texts_language_picks_the_sentence_rules():
    # Spanish rules know "pág." does not end a sentence; English ones split there
    assert sentences("Ver pág. 5 del libro. Bien.", "es") == ["Ver pág. 5 del libro.", "Bien."]
    assert sentences("Ver pág. 5 del libro. Bien.", "en") == ["Ver pág.", "5 del libro.", "Bien."]
    assert chunk_text("Ver pág. 5 del libro. Bien.", "es", 12) == ["Ver pág. 5", "del libro.", "Bien."]


def test_a_sentence_exactly_the_chunk_size_is_not_cut():
    assert chunk_text("Uno dos tres.", "es", 13) == ["Uno dos tres."]
    assert chunk_text("Hola. Uno dos tres.", "es", 13) == ["Hola.", "Uno dos tres."]


def test_a_one_letter_word_before_a_long_word_is_cut_after_it():
    assert chunk_text("y abcdefghij.", "es", 5) == ["y", "abcde", "fghij", "."]
