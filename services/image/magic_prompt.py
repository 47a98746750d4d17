"""Magic prompt: a short idea in Spanish or English -> a detailed SDXL prompt in a style preset.

Rules, not a model: deterministic, instant, no GPU. SDXL's CLIP encoders were trained on English
captions, so Spanish ideas go through a small advertising glossary (words it does not know are
kept as they are and reported), Spanish noun-adjective order is turned around ("zapatillas rojas"
-> "red sneakers"), and the style preset adds composition, light and quality terms.

This is the `rules` engine; `magic_llm` is the `llm` engine and `magic_prompter` chooses between
them (and falls back to these rules).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# --- style presets --------------------------------------------------------------------------------
STYLES: dict[str, tuple[str, str]] = {  # name -> (what goes before the subject, what goes after)
    "photo": ("professional photograph of",
              "natural light, sharp focus, high detail, 50mm lens, shallow depth of field, realistic, 8k"),
    "product": ("commercial product photography of",
                "studio lighting, clean seamless background, soft shadows, centered composition, "
                "high-end advertising, crisp details, 8k"),
    "cinematic": ("cinematic film still of",
                  "dramatic lighting, anamorphic lens, shallow depth of field, film grain, color graded, "
                  "epic composition, highly detailed"),
    "illustration": ("digital illustration of",
                     "vibrant colors, clean lines, detailed, trending on artstation, professional artwork"),
    "anime": ("anime artwork of", "studio anime style, vibrant colors, detailed background, key visual"),
    "3d": ("3d render of", "octane render, soft global illumination, smooth materials, high detail, 4k"),
    "watercolor": ("watercolor painting of", "soft washes, paper texture, delicate brush strokes, artistic"),
    "minimalist": ("minimalist composition of", "negative space, simple shapes, soft pastel palette, elegant"),
    "social": ("eye-catching social media ad image of",
               "bold colors, bright lighting, modern, high contrast, vertical composition, highly detailed"),
}
DEFAULT_STYLE = "photo"

# --- language -------------------------------------------------------------------------------------
_SPANISH_HINTS = {
    "el", "la", "los", "las", "un", "una", "unos", "unas", "de", "del", "con", "sin", "para", "por", "en",
    "y", "o", "que", "al", "sobre", "bajo", "entre", "muy", "mi", "su", "sus", "es", "está", "este", "esta",
}
_ENGLISH_HINTS = {
    "the", "a", "an", "of", "with", "without", "for", "on", "in", "and", "or", "at", "by", "is", "my", "its",
}
_SPANISH_DROP = {  # function words CLIP does not need once the rest is English
    "el", "la", "los", "las", "un", "una", "unos", "unas", "de", "del", "al", "que", "y", "e", "o", "u",
    "para", "por", "en", "es", "está", "están", "muy", "mi", "mis", "su", "sus", "este", "esta", "estos",
    "estas", "ese", "esa", "lo", "se",
}

# Multi-word phrases first (longest match wins), then single words: (english, part of speech).
_PHRASES = {
    "puesta de sol": "sunset", "puesta del sol": "sunset", "a la moda": "fashionable",
    "vino tinto": "red wine", "fondo blanco": "white background", "fondo negro": "black background",
    "luz natural": "natural light",
    "blanco y negro": "black and white", "primer plano": "close-up", "alta calidad": "high quality",
    "redes sociales": "social media", "comida rápida": "fast food", "gafas de sol": "sunglasses",
    "teléfono móvil": "smartphone", "cafetería": "coffee shop", "de noche": "at night", "de día": "by day",
    "en la": "in the", "en el": "in the", "en": "in", "al atardecer": "at sunset", "al amanecer": "at sunrise",
    "con": "with", "sin": "without", "sobre": "on", "bajo": "under", "entre": "between", "junto a": "next to",
    "frente a": "in front of", "detrás de": "behind", "encima de": "on top of", "cerca de": "near",
}
N, A, V = "n", "a", "v"
_WORDS: dict[str, tuple[str, str]] = {
    # people
    "mujer": ("woman", N), "mujeres": ("women", N), "hombre": ("man", N), "hombres": ("men", N),
    "niño": ("boy", N), "niña": ("girl", N), "niños": ("children", N), "persona": ("person", N),
    "gente": ("people", N), "familia": ("family", N), "modelo": ("model", N), "pareja": ("couple", N),
    "chica": ("young woman", N), "chico": ("young man", N), "perro": ("dog", N), "gato": ("cat", N),
    # products
    "producto": ("product", N), "zapato": ("shoe", N), "zapatos": ("shoes", N), "zapatilla": ("sneaker", N),
    "zapatillas": ("sneakers", N), "bolso": ("handbag", N), "reloj": ("watch", N), "perfume": ("perfume bottle", N),
    "botella": ("bottle", N), "taza": ("mug", N), "café": ("coffee", N), "cerveza": ("beer", N), "vino": ("wine", N),
    "agua": ("water", N), "jugo": ("juice", N), "zumo": ("juice", N), "hamburguesa": ("burger", N),
    "pizza": ("pizza", N), "pastel": ("cake", N), "torta": ("cake", N), "helado": ("ice cream", N),
    "comida": ("food", N), "plato": ("dish", N), "fruta": ("fruit", N), "frutas": ("fruits", N),
    "coche": ("car", N), "carro": ("car", N), "auto": ("car", N), "moto": ("motorcycle", N),
    "bicicleta": ("bicycle", N), "teléfono": ("phone", N), "móvil": ("smartphone", N), "celular": ("smartphone", N),
    "ordenador": ("computer", N), "computadora": ("computer", N), "portátil": ("laptop", N),
    "auriculares": ("headphones", N), "cámara": ("camera", N), "camiseta": ("t-shirt", N), "camisa": ("shirt", N),
    "vestido": ("dress", N), "chaqueta": ("jacket", N), "ropa": ("clothing", N), "gafas": ("glasses", N),
    "joya": ("jewelry", N), "joyas": ("jewelry", N), "anillo": ("ring", N), "collar": ("necklace", N),
    "crema": ("cream jar", N), "maquillaje": ("makeup", N), "labial": ("lipstick", N), "jabón": ("soap", N),
    "libro": ("book", N), "mesa": ("table", N), "silla": ("chair", N), "sofá": ("sofa", N), "lámpara": ("lamp", N),
    "logo": ("logo", N), "marca": ("brand", N), "tienda": ("store", N), "restaurante": ("restaurant", N),
    "casa": ("house", N), "oficina": ("office", N), "cocina": ("kitchen", N), "flor": ("flower", N),
    "flores": ("flowers", N), "planta": ("plant", N), "plantas": ("plants", N), "árbol": ("tree", N),
    # places, time, weather
    "playa": ("beach", N), "mar": ("sea", N), "océano": ("ocean", N), "montaña": ("mountain", N),
    "montañas": ("mountains", N), "bosque": ("forest", N), "ciudad": ("city", N), "calle": ("street", N),
    "parque": ("park", N), "desierto": ("desert", N), "lago": ("lake", N), "río": ("river", N),
    "cielo": ("sky", N), "nieve": ("snow", N), "lluvia": ("rain", N), "sol": ("sun", N), "luna": ("moon", N),
    "noche": ("night", N), "día": ("day", N), "atardecer": ("sunset", N), "amanecer": ("sunrise", N),
    "verano": ("summer", N), "invierno": ("winter", N), "otoño": ("autumn", N), "primavera": ("spring", N),
    "navidad": ("christmas", N), "fondo": ("background", N), "estudio": ("studio", N), "luz": ("light", N),
    "mármol": ("marble", N), "madera": ("wood", N), "piedra": ("stone", N), "cristal": ("glass", N),
    # colours (adjectives; Spanish puts them after the noun)
    "rojo": ("red", A), "roja": ("red", A), "rojos": ("red", A), "rojas": ("red", A),
    "azul": ("blue", A), "azules": ("blue", A), "verde": ("green", A), "verdes": ("green", A),
    "amarillo": ("yellow", A), "amarilla": ("yellow", A), "amarillos": ("yellow", A), "amarillas": ("yellow", A),
    "negro": ("black", A), "negra": ("black", A), "negros": ("black", A), "negras": ("black", A),
    "blanco": ("white", A), "blanca": ("white", A), "blancos": ("white", A), "blancas": ("white", A),
    "rosa": ("pink", A), "rosas": ("pink", A), "morado": ("purple", A), "morada": ("purple", A),
    "naranja": ("orange", A), "gris": ("gray", A), "dorado": ("golden", A), "dorada": ("golden", A),
    "plateado": ("silver", A), "plateada": ("silver", A), "marrón": ("brown", A),
    # qualities
    "grande": ("large", A), "grandes": ("large", A), "pequeño": ("small", A), "pequeña": ("small", A),
    "nuevo": ("new", A), "nueva": ("new", A), "moderno": ("modern", A), "moderna": ("modern", A),
    "elegante": ("elegant", A), "elegantes": ("elegant", A), "lujoso": ("luxurious", A), "lujosa": ("luxurious", A),
    "hermoso": ("beautiful", A), "hermosa": ("beautiful", A), "bonito": ("pretty", A), "bonita": ("pretty", A),
    "feliz": ("happy", A), "felices": ("happy", A), "sonriente": ("smiling", A), "joven": ("young", A),
    "jóvenes": ("young", A), "viejo": ("old", A), "vieja": ("old", A), "antiguo": ("antique", A),
    "antigua": ("antique", A), "fresco": ("fresh", A), "fresca": ("fresh", A), "frescos": ("fresh", A),
    "frescas": ("fresh", A), "caliente": ("hot", A), "frío": ("cold", A), "fría": ("cold", A),
    "deportivo": ("sporty", A), "deportiva": ("sporty", A), "deportivas": ("sporty", A),
    "natural": ("natural", A), "naturales": ("natural", A), "orgánico": ("organic", A), "orgánica": ("organic", A),
    "tropical": ("tropical", A), "urbano": ("urban", A), "urbana": ("urban", A), "brillante": ("shiny", A),
    "oscuro": ("dark", A), "oscura": ("dark", A), "claro": ("light", A), "clara": ("light", A),
    "minimalista": ("minimalist", A), "colorido": ("colorful", A), "colorida": ("colorful", A),
    "futurista": ("futuristic", A), "vintage": ("vintage", A), "retro": ("retro", A),
    "delicioso": ("delicious", A), "deliciosa": ("delicious", A), "saludable": ("healthy", A),
    # verbs and actions commonly seen in ad briefs
    "corriendo": ("running", V), "caminando": ("walking", V), "bebiendo": ("drinking", V),
    "comiendo": ("eating", V), "sonriendo": ("smiling", V), "bailando": ("dancing", V),
    "trabajando": ("working", V), "jugando": ("playing", V), "sentado": ("sitting", V), "sentada": ("sitting", V),
    "usando": ("using", V), "sosteniendo": ("holding", V), "mostrando": ("showing", V),
    # advertising words
    "promoción": ("promotion", N), "oferta": ("special offer", N), "ofertas": ("special offers", N),
    "descuento": ("discount", N), "rebajas": ("sale", N), "anuncio": ("advertisement", N),
    "publicidad": ("advertising", N), "lanzamiento": ("launch", N), "campaña": ("campaign", N),
    "cartel": ("poster", N), "banner": ("banner", N), "evento": ("event", N), "fiesta": ("party", N),
}


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text.lower())


def detect_language(text: str) -> str:
    """'es' or 'en', from function words, Spanish letters and the glossary; ties go to English."""
    words = re.findall(r"[\wáéíóúüñ]+", _fold(text))
    # glossary words spelt the same in English (pizza, logo, natural) say nothing about the language
    es = sum(w in _SPANISH_HINTS for w in words) + sum(w in _WORDS and _WORDS[w][0] != w for w in words)
    es += 2 * len(re.findall(r"[ñ¿¡]|ción\b", _fold(text)))
    en = sum(w in _ENGLISH_HINTS for w in words)
    return "es" if es > en else "en"


def translate(text: str) -> tuple[str, list[str]]:
    """Spanish idea -> English keywords; also the words the glossary did not know (kept as is)."""
    text = _fold(text)
    for phrase in sorted(_PHRASES, key=len, reverse=True):
        text = re.sub(rf"(?<![\w]){re.escape(phrase)}(?![\w])", f" §{_PHRASES[phrase]}§ ", text)
    tokens: list[tuple[str, str]] = []  # (english, part of speech)
    unknown: list[str] = []
    for chunk in re.split(r"(§[^§]*§)", text):
        if chunk.startswith("§"):
            tokens.append((chunk.strip("§"), "p"))
            continue
        for word in re.findall(r"[\w'-]+|[,.;]", chunk):
            if word in ("de", "del"):
                tokens.append(("of", "de"))
            elif word in _SPANISH_DROP:
                continue
            elif word in _WORDS:
                tokens.append(_WORDS[word])
            elif word in ",.;":
                tokens.append((",", "sep"))
            else:
                tokens.append((word, "?"))
                if not word.isdigit():
                    unknown.append(word)
    # "taza de café" -> "coffee mug": a noun, "de", and a noun (or a colour-like word) make one noun.
    merged: list[tuple[str, str]] = []
    for word, pos in tokens:
        if len(merged) >= 2 and merged[-1][1] == "de" and merged[-2][1] == N and pos in (N, A):
            merged.pop()
            head = merged.pop()[0]
            merged.append((f"{word} {head}", N))
        else:
            merged.append((word, pos))
    # Spanish puts adjectives after their noun: move each run of adjectives in front of it.
    out: list[str] = []
    i = 0
    while i < len(merged):
        word, pos = merged[i]
        j = i + 1
        if pos == N:
            while j < len(merged) and merged[j][1] == A:
                j += 1
            out.extend(w for w, _ in merged[i + 1:j])
        if pos != "de":  # a "de" that joined nothing reads as nothing in English keywords
            out.append(word)
        i = j
    english = " ".join(out)
    english = re.sub(r"\s+,", ",", english)
    english = re.sub(r"(,\s*)+", ", ", english).strip(" ,")
    return english, unknown


@dataclass(frozen=True)
class MagicPrompt:
    prompt: str
    style: str
    language: str
    engine: str
    subject: str
    untranslated: list[str] = field(default_factory=list)
    tokens: int | None = None  # CLIP tokens of `prompt`, start and end included
    tokenizer: str | None = None  # what counted them: "sdxl" or "estimate"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "style": self.style, "language": self.language, "engine": self.engine,
                "subject": self.subject, "untranslated": list(self.untranslated), "tokens": self.tokens,
                "tokenizer": self.tokenizer, "warnings": list(self.warnings)}


class RulesExpander:
    name = "rules"

    def expand(self, idea: str, style: str = DEFAULT_STYLE, language: str | None = None) -> MagicPrompt:
        idea = " ".join(idea.split())
        language = language or detect_language(idea)
        if language == "es":
            subject, unknown = translate(idea)
        else:
            subject, unknown = idea.strip(" .,").lower() if idea.isupper() else idea.strip(" .,"), []
        before, after = STYLES[style]
        return MagicPrompt(prompt=f"{before} {subject}, {after}", style=style, language=language,
                           engine=self.name, subject=subject, untranslated=unknown)

