"""Entity phrases of a caption: what the detector is asked to find.

Both detectors take phrases: Grounding DINO reads them joined as ``"dog . red ball ."`` (its prompt
format) and says which phrase each box belongs to; OWLv2 scores every box against each phrase.
The phrases come from the caption itself, so every subject's phrase appears verbatim in its
sample's caption (the manifest requires it):

* with ``phrase_vocabulary`` set, the phrases are the vocabulary entries found in the caption
  (whole words, case-insensitive, longest first) — precise when you know your domain;
* otherwise a small noun-phrase chunker: split the caption at function words (articles,
  prepositions, conjunctions, pronouns, common verbs and ``-ing`` verb forms); each remaining run
  of words is a phrase, trimmed to its last three words; runs whose head (last word) is scenery
  (``stuff_words``: sky, beach, room, ...) are dropped. English only; it needs no model.
"""

from __future__ import annotations

import re

__all__ = ["extract_phrases"]

# A word: letters (inner ' and - allowed), not glued to digits or underscores — the manifest
# check finds phrases as whole words (``layout.find_phrase``).
_WORD = re.compile(r"(?<!\w)[A-Za-z](?:[A-Za-z'\-]*[A-Za-z])?(?!\w)")

_BREAK = frozenset(
    """
a an the this that these those there here it its it's his her hers their theirs my your our
he she they we you i me him them us who whom which what whose where when while as than then
and or but nor so yet both either neither of in on at by for with without within from to into
onto upon over under above below beneath behind beside besides between among through across
around near next along against toward towards up down out off about after before during
inside outside onto via per like unlike is are was were be been being am has have had do does
did can could will would shall should may might must not no some any each every all many much
few several one two three four five six seven eight nine ten lots lot other another same such
very too also just only while front top bottom left right middle background foreground
sits sit sitting stands stand standing lies lying looks look looking holds hold holding plays
play playing walks walk walking runs run running rides ride riding wears wear wearing shows
show showing appears made being getting gets get has having seen shown taken
arafed araffe arafe arafly there's that's
""".split()
)

# -ing words that are usually nouns, not verb forms.
_ING_NOUNS = frozenset(
    """
building buildings painting paintings ceiling clothing ring rings king kings wing wings string
strings thing things swing swings sibling siblings pudding stocking stockings wedding icing
earring earrings railing railings awning duckling ducklings sling
""".split()
)


def extract_phrases(
    caption: str,
    *,
    stuff_words: list[str] | tuple[str, ...] = (),
    vocabulary: list[str] | None = None,
    max_phrases: int = 8,
) -> list[str]:
    """Entity phrases of ``caption`` (verbatim substrings, first occurrence order, no repeats)."""
    if vocabulary:
        return _from_vocabulary(caption, vocabulary, max_phrases)
    stuff = {w.lower() for w in stuff_words}
    words = [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(caption)]
    runs: list[list[tuple[str, int, int]]] = [[]]
    for word, start, end in words:
        lower = word.lower()
        is_break = lower in _BREAK or (lower.endswith("ing") and lower not in _ING_NOUNS)
        gap = caption[runs[-1][-1][2] : start] if runs[-1] else ""
        if is_break or (gap and gap.strip()):  # punctuation also ends a phrase
            runs.append([])
        if not is_break:
            runs[-1].append((word, start, end))
    phrases: list[str] = []
    seen: set[str] = set()
    for run in runs:
        if not run or run[-1][0].lower() in stuff or len(run[-1][0]) < 2:
            continue
        run = run[-3:]
        phrase = caption[run[0][1] : run[-1][2]]
        if phrase.lower() not in seen:
            seen.add(phrase.lower())
            phrases.append(phrase)
    return phrases[:max_phrases]


def _from_vocabulary(caption: str, vocabulary: list[str], max_phrases: int) -> list[str]:
    taken = [False] * len(caption)
    found: list[tuple[int, str]] = []
    for entry in sorted({v.strip() for v in vocabulary}, key=lambda v: (-len(v), v)):
        pattern = re.compile(r"(?<!\w)" + re.escape(entry) + r"(?!\w)", re.IGNORECASE)
        for match in pattern.finditer(caption):
            if not any(taken[match.start() : match.end()]):
                taken[match.start() : match.end()] = [True] * (match.end() - match.start())
                found.append((match.start(), match.group(0)))
                break  # first occurrence only
    return [phrase for _, phrase in sorted(found)][:max_phrases]
