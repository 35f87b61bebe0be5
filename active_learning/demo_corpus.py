"""A small English NER corpus that nerloop generates itself, so the demo needs no downloaded data.

Sentences are filled from templates with people, organisations and places; spans are recorded as
the slots are filled, so the gold labels are exact. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import re

from .spans import Example, Span

LABELS = ["PER", "ORG", "LOC"]

_FIRST = ["Anna", "Boris", "Chen", "Dara", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kofi",
          "Lena", "Marek", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tomas", "Uma", "Viktor",
          "Wen", "Yusuf", "Zara"]
_LAST = ["Abara", "Berg", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
         "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Sato",
         "Tanaka", "Urban", "Varga", "Weber", "Yilmaz", "Zielinski"]
_ORG = ["Northwind Bank", "Helix Labs", "the Red Cross", "Apex Motors", "Globex", "Vantage Airlines",
        "the United Nations", "Orion Software", "Blue River Energy", "the World Health Organization",
        "Nimbus Media", "Kestrel Insurance", "the Royal Society", "Atlas Foods", "Quantum Freight",
        "Lumen University", "Cobalt Mining", "the European Central Bank", "Starling Telecom"]
_LOC = ["Paris", "Nairobi", "Lima", "Osaka", "Oslo", "Cairo", "Toronto", "Lisbon", "Hanoi", "Quito",
        "Krakow", "Dublin", "Accra", "Seoul", "Perth", "Bogota", "Vienna", "Mumbai", "the Alps",
        "Lake Victoria", "the Sahara", "New Zealand", "South Africa", "the Baltic Sea", "Chile"]

_TEMPLATES = [
    "{PER} joined {ORG} in {LOC} last year .",
    "{ORG} said on Monday it would open an office in {LOC} .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "Shares of {ORG} rose 3 percent after {PER} was named chief executive .",
    "{PER} flew from {LOC} to {LOC} on Tuesday .",
    "Police in {LOC} arrested two men , {PER} told reporters .",
    "{ORG} and {ORG} agreed to merge , according to {PER} .",
    "The storm hit {LOC} early on Sunday , cutting power to thousands .",
    "{PER} met {PER} in {LOC} to discuss the deal .",
    "Heavy rain is expected across {LOC} this week .",
    "{ORG} reported a loss of 12 million dollars for the quarter .",
    "Officials from {ORG} visited {LOC} and {LOC} .",
    "\" We are very pleased , \" {PER} said .",
    "The match in {LOC} ended 2-1 .",
    "{PER} won the race ahead of {PER} .",
    "Prices fell again on Friday , traders said .",
]


def _person(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return rng.choice([f"{first} {last}", last, f"Mr {last}" if rng.random() < 0.5 else f"Ms {last}"])


def generate(n: int = 1200, seed: int = 0) -> list[Example]:
    """``n`` template sentences with PER, ORG and LOC spans."""
    rng = random.Random(seed)
    fillers = {"PER": lambda: _person(rng), "ORG": lambda: rng.choice(_ORG), "LOC": lambda: rng.choice(_LOC)}
    examples = []
    for i in range(n):
        template = rng.choice(_TEMPLATES)
        text, spans, cursor = "", [], 0
        for match in re.finditer(r"\{(PER|ORG|LOC)\}", template):
            text += template[cursor : match.start()]
            mention = fillers[match.group(1)]()
            if match.group(1) == "PER" and mention.startswith(("Mr ", "Ms ")):
                text += mention[:3]  # the title is not part of the name
                mention = mention[3:]
            # "the" in "the Alps" is not part of the entity, as in CoNLL-2003.
            article = "the " if mention.startswith("the ") else ""
            text += article
            spans.append(Span(len(text), len(text) + len(mention) - len(article), match.group(1)))
            text += mention[len(article) :]
            cursor = match.end()
        text += template[cursor:]
        if text[0].islower():
            text = text[0].upper() + text[1:]
        examples.append(Example(text, spans, {"id": f"demo-{seed}-{i}"}))
    return examples
