"""A deterministic English sentence generator: the corpus's own text, with no download.

Templates filled from word lists give statements, questions and exclamations of 5 to 16 words,
so the corpus has varied intonation and covers the English phone inventory. The same generator
state always gives the same sentence.
"""

import numpy as np

_NAMES = """Anna Ben Clara David Emma Felix Grace Henry Iris Jack Kate Leo Maria Nathan Olivia
Peter Quinn Rachel Samuel Tessa Victor Wendy Yusuf Zoe""".split()
_ADJECTIVES = """quiet bright heavy ancient narrow golden frozen gentle noisy careful yellow
empty crowded wooden shiny strange tiny enormous patient curious thirsty dusty smooth rough
purple cheerful lonely broken fresh modern""".split()
_NOUNS = """garden river window teacher kitchen bicycle mountain letter village doctor
blanket engine pencil orchard market harbour violin castle tiger farmer ladder jacket museum
lantern bridge pocket sailor beach forest painting rabbit journey question""".split()
_VERBS_PAST = """found carried painted opened watched cleaned borrowed repaired measured
pushed described visited followed noticed lifted counted washed delivered bought explored""".split()
_VERBS = """find carry paint open watch clean borrow repair measure push describe visit
follow notice lift count wash deliver buy explore""".split()
_PLACES = """near the station, behind the old school, across the valley, under the bridge,
beside the lake, at the edge of town, in the north tower, outside the bakery, along the
shore, through the thick fog""".split(",")
_TIMES = """yesterday morning, last winter, every Sunday, before dinner, after the storm,
at midnight, during the summer, on a cold Thursday, three weeks ago, just before sunrise""".split(",")
_ADVERBS = """slowly quickly quietly carefully happily suddenly eagerly calmly proudly gladly""".split()
_NUMBERS = """two three four five seven nine twelve fifteen twenty forty""".split()


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return " ".join(words[rng.integers(len(words))].split())


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _sentence(rng: np.random.Generator) -> str:
    name, other = _pick(rng, _NAMES), _pick(rng, _NAMES)
    adjective, adjective2 = _pick(rng, _ADJECTIVES), _pick(rng, _ADJECTIVES)
    noun, noun2 = _pick(rng, _NOUNS), _pick(rng, _NOUNS)
    verb_past, verb = _pick(rng, _VERBS_PAST), _pick(rng, _VERBS)
    place, time, adverb = _pick(rng, _PLACES), _pick(rng, _TIMES), _pick(rng, _ADVERBS)
    number = _pick(rng, _NUMBERS)
    templates = [
        f"{name} {adverb} {verb_past} the {adjective} {noun} {place}.",
        f"{time.capitalize()}, {name} {verb_past} {number} {adjective} {noun}s.",
        f"Did {name} really {verb} the {noun} {place}?",
        f"The {adjective} {noun} was {place}, and {other} {verb_past} it {time}.",
        f"Why would anyone {verb} {_a(adjective)} {noun} {time}?",
        f"What {_a(adjective)} {noun} that was!",
        f"{name} told {other} to {verb} the {noun2} before the {noun} got {adjective2}.",
        f"If the {noun} is {adjective}, we will {verb} it {adverb}.",
        f"There were {number} {noun}s {place}, all of them {adjective}.",
        f"Please {verb} the {adjective} {noun} and bring it to {name}.",
    ]
    return templates[rng.integers(len(templates))]


def utterance_text(rng: np.random.Generator) -> str:
    """One or, a third of the time, two sentences."""
    count = 2 if rng.random() < 1 / 3 else 1
    return " ".join(_sentence(rng) for _ in range(count))
