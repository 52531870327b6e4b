"""WordNet lookups for the "still true of the image" check: synonyms, hypernyms, hyponyms, parts of speech.

A negative that swaps a word for its synonym ("photo" -> "picture"), a more general word ("dog" ->
"animal") or, possibly, a more specific one ("boat" -> "ferry") may still describe the image; the
negatives validation and the rules editor (through `lexicon.still_true`) ask this module before
accepting such a swap, after the lexicon's hand lists. The database is Princeton WordNet 3.0 as Debian
packages it (`wordnet-base`, in /usr/share/wordnet), read with nltk's `WordNetCorpusReader` through a thin
adapter, since nltk does not read Debian's folder as it is:
  - nltk only opens files under its data roots: the folder is registered on `nltk.data.path`, nltk's
    documented way to authorise a corpus kept elsewhere (its ownership checks still apply, and it
    refuses links that resolve outside the folder: a folder of symlinks to the database does not do);
  - Debian ships no `lexnames` (the lexicographer file names, read at load): it is served from the
    fixed list of lexnames(5WN);
  - at load, nltk maps the database onto "the" nltk WordNet through `index.sense` and the nltk_data
    copy (`map_wn`, for the multilingual wordnets only): this reader is that WordNet, so no mapping.
`index.sense` (sense keys) is read only by `lemma_from_key`, which is not used here.
API: `available()`, `relation(a, b, pos=None)`, `pos_tags(word)` (every part of speech WordNet has),
`main_pos(word)` (those the word is mainly used in, most frequent first), `lemmas(word, pos=None)`.
Where the database is: `$TPO_RAY_WORDNET` (a folder; nothing else is tried when it is set), else
/usr/share/wordnet, else an nltk_data `corpora/wordnet`. Without it (or without nltk) every function
answers "unknown" (None, empty) and never raises; `available()` says so and one log line says how to
install it. The lexicon stays the fallback.

Relations are bounded so that WordNet's breadth does not make everything related:
  - the first word is read in its *main* sense (WordNet's sense 1, the most frequent in its tagged
    corpus) in its main parts of speech (those it is tagged in at least a quarter as often as in its
    most frequent one, or the one the caller names), since a caption uses a word in its ordinary
    meaning: "dog" is the animal, not the "frump" or "cad" of its rarer senses (which would make
    dog -> woman a hypernym pair), and "kitten" is not the verb (whose hypernym "bear" would relate
    kitten -> bear);
  - "synonym": the second word (any inflection) names that sense (photo -> picture, jumps -> leaps);
  - "hypernym": it names an ancestor of that sense (dog -> animal, dog -> mammal; an adjective
    satellite's head counts: elderly -> old), except WordNet's top nodes, which say nothing of the image
    (entity, physical_entity, abstraction, object, whole, thing, ...: nouns of depth 2 or less, and
    whole/unit);
  - "hyponym": the main sense of the second word descends from the first's (animal -> dog, old ->
    elderly), the first not being a top node;
  - siblings are not related (dog/cat, red/blue, boy/man, ship/ferry: a ferry is a boat, not a ship, in
    WordNet 3.0); neither are two inflections of one word (dog/dogs: number is the caller's judgement).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "TPO_RAY_WORDNET"
DEBIAN_DIR = Path("/usr/share/wordnet")
INSTALL_HINT = ("install Debian's wordnet-base (`sudo apt-get install wordnet-base`, or `make install`) or set "
                f"{ENV_VAR} to a WordNet 3.0 database folder; the still-true check uses the lexicon only")

# What nltk reads at load and at query time (cntlist.rev: tag counts), beside `lexnames` (generated) and `index.sense` (unused here).
REQUIRED_FILES = ("cntlist.rev", "data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                  "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")

# lexnames(5WN): the lexicographer files, numbered from 00, with their syntactic category (1 noun, 2 verb,
# 3 adjective, 4 adverb). WordNet 3.0 has these 45; the data files refer to them by number.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}

POS_NAMES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
_POS_OF = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
_ARTICLES = ("a ", "an ", "the ")
# WordNet's top noun nodes: an ancestor here says nothing about the image ("dog" -> "object").
TOP_NOUN_DEPTH = 2
TOP_NOUNS = frozenset({"whole.n.02"})  # depth 3, but "whole, unit" is as empty as "object"

_lock = threading.RLock()  # nltk's reader seeks and reads shared file handles; lookups hold it


def lexnames_text() -> str:
    """The `lexnames` file nltk reads at load: "NN<tab>name<tab>category" per line, as in lexnames(5WN)."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def database_dir() -> Path | None:
    """The WordNet folder to read: `$TPO_RAY_WORDNET` when set (even if incomplete: then None), else
    Debian's /usr/share/wordnet, else an nltk_data `corpora/wordnet` folder; None when there is none."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env) if _complete(Path(env)) else None
    if _complete(DEBIAN_DIR):
        return DEBIAN_DIR
    try:
        import nltk.data

        found = Path(str(nltk.data.find("corpora/wordnet")))
    except (ImportError, LookupError, OSError, ValueError):
        return None
    return found if _complete(found) else None


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED_FILES)


def _make_reader(root: Path) -> Any:
    """nltk's WordNetCorpusReader over `root`, with the adapter's three changes (module docstring)."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.data import SeekableUnicodeStreamReader

    has_lexnames = (root / "lexnames").is_file()

    class DebianWordNetReader(WordNetCorpusReader):
        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not has_lexnames:
                return SeekableUnicodeStreamReader(io.BytesIO(lexnames_text().encode()), "utf8")
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    if str(root.resolve()) not in {str(p) for p in nltk.data.path}:
        nltk.data.path.append(str(root.resolve()))
    with warnings.catch_warnings():  # "multilingual functions are not available": none are used
        warnings.simplefilter("ignore")
        return DebianWordNetReader(str(root.resolve()), None)


@lru_cache(maxsize=1)
def _reader() -> Any:
    """The process's reader, loaded on first use (about a second); None when WordNet is unavailable."""
    root = database_dir()
    if root is None:
        where = os.environ.get(ENV_VAR, "").strip() or f"{DEBIAN_DIR} or nltk_data"
        logger.warning("WordNet is not available (no database in %s): %s", where, INSTALL_HINT)
        return None
    try:
        return _make_reader(root)
    except ImportError:
        logger.warning("WordNet is not available (nltk is not installed): pip install 'nltk>=3.9,<4'; %s",
                       INSTALL_HINT)
    except Exception as exc:  # a broken database must not stop a negatives job: the lexicon remains
        logger.warning("WordNet is not available (%s cannot be read: %s: %s): %s", root,
                       type(exc).__name__, exc, INSTALL_HINT)
    return None


def available() -> bool:
    """Whether the WordNet database and nltk are there (loads the reader on first call)."""
    return _reader() is not None


def reset() -> None:
    """Forget the reader and every cached answer (after installing the database, or in tests)."""
    for cached in (_reader, _synsets, _forms, _main_pos, relation, main_pos, pos_tags, lemmas):
        cached.cache_clear()


def _key(text: str) -> str:
    """WordNet's spelling of a word or phrase: lower case, no leading article, words joined by "_"."""
    key = " ".join(text.lower().split())
    for article in _ARTICLES:
        if key.startswith(article) and len(key) > len(article):
            key = key[len(article):]
            break
    return key.replace(" ", "_")


@lru_cache(maxsize=65536)
def _synsets(text: str, pos: str) -> tuple[Any, ...]:
    """Synsets of a word in any inflection for one WordNet pos ("n", "v", "a", "r"), sense order."""
    reader = _reader()
    key = _key(text)
    if reader is None or not key:
        return ()
    with _lock:
        return tuple(reader.synsets(key, pos))


@lru_cache(maxsize=65536)
def _forms(text: str, pos: str) -> frozenset[str]:
    """The base forms (WordNet lemmas) a word in any inflection can stand for in one pos."""
    reader = _reader()
    key = _key(text)
    if reader is None or not key:
        return frozenset()
    with _lock:
        return frozenset(reader._morphy(key, pos))


def _count(synsets: tuple[Any, ...], forms: frozenset[str]) -> int:
    """How often the word was tagged in these senses in WordNet's corpus (cntlist.rev)."""
    return sum(lemma.count() for s in synsets for lemma in s.lemmas() if lemma.name().lower() in forms)


@lru_cache(maxsize=65536)
def _main_pos(text: str) -> tuple[str, ...]:
    """The WordNet pos ("n", "v", "a", "r") the word is mainly used in, most tagged first: each one it is
    tagged in at least a quarter as often as in its most frequent one (counts plus one, so a part of
    speech never tagged stays beside one tagged once: "ferry", 0 as a noun, 1 as a verb)."""
    with _lock:
        found = [p for p in "nvar" if _synsets(text, p)]
        counts = {p: _count(_synsets(text, p), _forms(text, p)) for p in found}
    top = max(counts.values(), default=0)
    return tuple(sorted((p for p in found if 4 * (counts[p] + 1) >= top + 1), key=lambda p: -counts[p]))


def _main_senses(text: str, pos: str | None = None) -> tuple[Any, ...]:
    """Sense 1 of the word in part of speech `pos` when given, else in its main ones, so that "kitten" is
    not read as the verb "to kitten" (-> "bear") nor "jumps" as a noun."""
    wanted = [POS_NAMES[pos]] if pos else _main_pos(text)
    return tuple(found[0] for p in wanted if (found := _synsets(text, p)))


@lru_cache(maxsize=65536)
def main_pos(word: str) -> tuple[str, ...]:
    """The parts of speech ("noun", "verb", "adj", "adv") the word (any inflection) is mainly used in, the
    most frequent first, by WordNet's tagged corpus: `pos_tags` less the rare ones ("kitten" -> ("noun",),
    not the verb "to kitten"; "circles" -> ("noun", "verb")); empty when unknown or unavailable."""
    return tuple(_POS_OF[p] for p in _main_pos(word))


def _names(synset: Any) -> frozenset[str]:
    return frozenset(lemma.name().lower() for lemma in synset.lemmas())


def _is_top(synset: Any) -> bool:
    return synset.pos() == "n" and (synset.name() in TOP_NOUNS or synset.min_depth() <= TOP_NOUN_DEPTH)


def _ancestors(synset: Any) -> list[Any]:
    """Every hypernym of a sense, transitively (instances included), top nodes left out; for an adjective
    satellite, its head adjective ("elderly" -> "old")."""
    if synset.pos() == "s":
        return list(synset.similar_tos())
    found = synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())
    return [s for s in found if not _is_top(s)]


@lru_cache(maxsize=65536)
def relation(a: str, b: str, pos: str | None = None) -> str | None:
    """How `b` relates to `a` in WordNet: "synonym", "hypernym" (b is more general: dog -> animal),
    "hyponym" (b is more specific: animal -> dog) or None (unrelated, the same word, or unknown).

    Words or phrases ("next to", "fire trucks"), in any inflection, nouns, verbs and adjectives; `a` is
    read in its main senses (see the module docstring for the bounds), in part of speech `pos` ("noun",
    "verb", "adj", "adv") when the caller knows it ("circles" in "a poodle circles a sparkler": "verb")."""
    if pos is not None and pos not in POS_NAMES:
        raise ValueError(f"pos={pos!r}: expected one of {sorted(POS_NAMES)} or None")
    with _lock:
        return _relation(a, b, pos)


def _relation(a: str, b: str, pos: str | None) -> str | None:
    senses_a = _main_senses(a, pos)
    if not senses_a or not _key(b):
        return None
    forms_b = {pos: _forms(b, pos) for pos in "nvar"}
    forms_b["s"] = forms_b["a"]
    if any(forms_b[pos] & _forms(a, pos) for pos in "nvar"):
        return None  # one word: dog/dogs, jumps/jumped
    if any(forms_b[s.pos()] & _names(s) for s in senses_a):
        return "synonym"
    if any(forms_b[h.pos()] & _names(h) for s in senses_a for h in _ancestors(s)):
        return "hypernym"
    general = {s for s in senses_a if not _is_top(s)}
    if any(set(_ancestors(s)) & general for s in _main_senses(b, pos)):
        return "hyponym"
    return None


@lru_cache(maxsize=65536)
def pos_tags(word: str) -> frozenset[str]:
    """The parts of speech WordNet knows the word (any inflection) in: a subset of {"noun", "verb",
    "adj", "adv"}; empty when it knows none or is unavailable. "circles" -> {noun, verb}."""
    return frozenset(name for name, pos in POS_NAMES.items() if _synsets(word, pos))


@lru_cache(maxsize=65536)
def lemmas(word: str, pos: str | None = None) -> tuple[str, ...]:
    """The WordNet base forms of a word in any inflection ("leaves" -> ("leaf", "leave")), for one part
    of speech ("noun", "verb", "adj", "adv") or all; multi-word lemmas keep WordNet's "_"."""
    if pos is not None and pos not in POS_NAMES:
        raise ValueError(f"pos={pos!r}: expected one of {sorted(POS_NAMES)} or None")
    wanted = [POS_NAMES[pos]] if pos else list(POS_NAMES.values())
    found: dict[str, None] = {}
    for wn_pos in wanted:
        for form in sorted(_forms(word, wn_pos)):
            found.setdefault(form, None)
    return tuple(found)
