"""WordNet relations for the still-true check (issue 24): the issue's examples, inflections, phrases, parts of
speech, the bounds that keep siblings and WordNet's top nodes unrelated, and the unavailable path.

The database tests need Debian's wordnet-base (`make install` or `apt-get install wordnet-base`) and nltk;
they are skipped without them. The unavailable-path tests always run.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

from tpo_ray.negatives import wordnet


@pytest.fixture(autouse=True)
def _default_location(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database tests read the default location and share one load of it."""
    monkeypatch.delenv(wordnet.ENV_VAR, raising=False)


@pytest.fixture
def fresh():
    """For a test that changes where the database is (or whether nltk imports): no reader or answer cached
    before it, none left behind for the next test."""
    wordnet.reset()
    yield
    wordnet.reset()


def _database_here() -> bool:
    try:
        import nltk  # noqa: F401
    except ImportError:
        return False
    root = Path(os.environ["TPO_RAY_WORDNET"]) if os.environ.get("TPO_RAY_WORDNET") else wordnet.DEBIAN_DIR
    return root.is_dir() and all((root / f).is_file() for f in wordnet.REQUIRED_FILES)


needs_db = pytest.mark.skipif(
    not _database_here(),
    reason="WordNet database or nltk absent: `make install` (apt-get install wordnet-base; pip install nltk)")


# --- the issue's examples -------------------------------------------------------------------------------

@needs_db
@pytest.mark.parametrize(("a", "b", "expected"), [
    ("dog", "animal", "hypernym"),      # "LLM validation accepts ... dog -> animal"
    ("photo", "picture", "synonym"),    # "... photo -> picture"
    ("jumps", "leaps", "synonym"),      # "... jumps -> leaps"
    ("boat", "ferry", "hyponym"),       # a ferry is a boat (ferry.n.01 -> boat.n.01)
    ("animal", "dog", "hyponym"),
    ("ship", "vessel", "hypernym"),
    ("dog", "mammal", "hypernym"),      # transitive: dog -> canine -> carnivore -> placental -> mammal
    ("boy", "person", "hypernym"),      # person is general but not a top node
    ("couch", "sofa", "synonym"),
    ("several", "some", "hypernym"),    # adjective satellite -> its head
    ("elderly", "old", "hypernym"),
    ("old", "elderly", "hyponym"),
    ("pier", "wharf", "synonym"),
])
def test_the_issues_pairs_are_related(a: str, b: str, expected: str) -> None:
    assert wordnet.available()
    assert wordnet.relation(a, b) == expected


@needs_db
@pytest.mark.parametrize(("a", "b"), [
    ("dog", "cat"),          # siblings under carnivore: a real content edit
    ("red", "blue"),         # both satellites of "chromatic": siblings
    ("riding", "catching"),  # the rules editor's nonsense swap, unrelated in WordNet
    ("boy", "man"),          # an age edit: male_child and man are siblings under male
    ("young", "elderly"),
    ("baby", "boy"),         # the issue's still-true example is NOT a WordNet pair (lexicon's compatible class)
    ("ship", "ferry"),       # WordNet 3.0: ferry -> boat -> vessel <- ship; siblings' child (lexicon's job)
    ("near", "next to"),     # "next to" is not in WordNet (lexicon's compatible class)
    ("holding", "touching"),
    ("several", "many"),
    ("sitting", "resting"),
    ("legs", "knees"),
    ("photo", "cartoon"),
])
def test_siblings_and_unrelated_pairs_are_not_related(a: str, b: str) -> None:
    assert wordnet.relation(a, b) is None


@needs_db
@pytest.mark.parametrize(("a", "b"), [
    ("dog", "woman"),   # dog's rare sense "frump" (-> unpleasant woman): not the caption's dog
    ("man", "dog"),     # dog's rare sense "chap" would make dog a kind of man
    ("cat", "guy"),     # cat.n.03 "guy" is a rare sense
    ("kitten", "bear"), # the verb "to kitten" (-> give birth, bear) is not how "kitten" is used
])
def test_rare_senses_and_rare_parts_of_speech_do_not_relate_words(a: str, b: str) -> None:
    assert wordnet.relation(a, b) is None


@needs_db
@pytest.mark.parametrize("general", ["entity", "physical entity", "object", "whole", "abstraction", "thing"])
def test_wordnets_top_nodes_are_not_hypernyms(general: str) -> None:
    assert wordnet.relation("dog", general) is None
    assert wordnet.relation(general, "dog") is None


# --- inflections, phrases, parts of speech ------------------------------------------------------------

@needs_db
@pytest.mark.parametrize(("a", "b", "expected"), [
    ("dogs", "animals", "hypernym"),
    ("jumping", "leaping", "synonym"),
    ("jumped", "leapt", "synonym"),
    ("Photos", "pictures", "synonym"),
    ("puppies", "dogs", "hypernym"),
])
def test_any_inflection(a: str, b: str, expected: str) -> None:
    assert wordnet.relation(a, b) == expected


@needs_db
def test_multi_word_phrases_use_wordnets_underscore_lemmas() -> None:
    assert wordnet.relation("fire truck", "fire engine") == "synonym"
    assert wordnet.relation("fire trucks", "fire engine") == "synonym"
    assert wordnet.relation("a fire truck", "the fire engine") == "synonym"  # leading articles dropped
    assert wordnet.relation("fire truck", "truck") == "hypernym"
    assert wordnet.lemmas("fire trucks") == ("fire_truck",)
    assert wordnet.pos_tags("next to") == frozenset()  # not a WordNet entry: unknown, not an error


@needs_db
def test_one_word_in_two_inflections_is_no_relation() -> None:
    # number and tense are the caller's judgement ("one dog" -> "two dogs" is a count edit)
    assert wordnet.relation("dog", "dogs") is None
    assert wordnet.relation("jumps", "jumped") is None


@needs_db
def test_a_known_part_of_speech_narrows_the_reading() -> None:
    # "a poodle circles a sparkler": as a noun, a circle is a kind of ellipse (oval); as a verb it is not
    assert wordnet.relation("circles", "ovals") == "hypernym"
    assert wordnet.relation("circles", "ovals", pos="verb") is None
    assert wordnet.relation("circles", "moves", pos="verb") == "hypernym"  # circle.v.01 -> travel (move)
    with pytest.raises(ValueError, match="pos='verbs'"):
        wordnet.relation("circles", "ovals", pos="verbs")


@needs_db
def test_pos_tags() -> None:
    assert {"noun", "verb"} <= wordnet.pos_tags("circles")
    assert "adj" in wordnet.pos_tags("elderly")
    assert "verb" not in wordnet.pos_tags("elderly")
    assert wordnet.pos_tags("holding") == frozenset({"noun", "verb"})
    assert wordnet.pos_tags("quickly") == frozenset({"adv"})
    assert wordnet.pos_tags("xqzzy") == frozenset()


@needs_db
def test_main_pos_drops_the_parts_of_speech_a_word_is_rarely_used_in() -> None:
    # by WordNet's tagged corpus: "kitten" the verb, "elderly" the noun, "jumps" the noun are rare
    assert wordnet.main_pos("kitten") == ("noun",)
    assert wordnet.main_pos("elderly") == ("adj",)
    assert wordnet.main_pos("jumps") == ("verb",)
    assert wordnet.main_pos("circles") == ("noun", "verb")  # 31 and 10 tagged uses: both kept, noun first
    assert wordnet.main_pos("lighthouse") == ("noun",)
    assert wordnet.main_pos("xqzzy") == ()


@needs_db
def test_lemmas() -> None:
    assert wordnet.lemmas("leaves") == ("leaf", "leave")
    assert wordnet.lemmas("leaves", pos="noun") == ("leaf", "leave")  # "leave" is a noun too (on leave)
    assert wordnet.lemmas("leaves", pos="verb") == ("leave",)
    assert wordnet.lemmas("ran", pos="verb") == ("run",)
    assert wordnet.lemmas("mice") == ("mouse",)
    assert wordnet.lemmas("xqzzy") == ()
    with pytest.raises(ValueError, match="pos='n'"):
        wordnet.lemmas("dog", pos="n")


@needs_db
def test_the_lexnames_nltk_reads_are_the_documented_45(tmp_path: Path) -> None:
    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[5] == "05\tnoun.animal\t1" and lines[44] == "44\tadj.ppl\t3"
    # and the reader files every sense under its own lexicographer file through them
    reader = wordnet._reader()
    assert reader.synset("dog.n.01").lexname() == "noun.animal"
    assert reader.synset("jump.v.01").lexname() == "verb.motion"


@needs_db
def test_a_folder_named_by_the_environment_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh) -> None:
    """$TPO_RAY_WORDNET: a folder outside nltk's data roots holding a copy of the Debian files (no lexnames;
    links would not do: nltk refuses a file that resolves outside its corpus root)."""
    for name in wordnet.REQUIRED_FILES:
        shutil.copyfile(wordnet.DEBIAN_DIR / name, tmp_path / name)
    monkeypatch.setenv(wordnet.ENV_VAR, str(tmp_path))
    assert wordnet.database_dir() == tmp_path
    assert wordnet.relation("dog", "animal") == "hypernym"


# --- unavailable: unknown answers, never an exception ---------------------------------------------------

def _assert_unknown() -> None:
    assert wordnet.available() is False
    assert wordnet.relation("dog", "animal") is None
    assert wordnet.relation("photo", "picture", pos="noun") is None
    assert wordnet.pos_tags("circles") == frozenset()
    assert wordnet.main_pos("circles") == ()
    assert wordnet.lemmas("leaves") == ()
    assert wordnet.lemmas("leaves", pos="noun") == ()


def test_an_empty_folder_named_by_the_environment_means_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh) -> None:
    monkeypatch.setenv(wordnet.ENV_VAR, str(tmp_path))  # set: Debian's folder is not tried instead
    with caplog.at_level(logging.WARNING, logger=wordnet.__name__):
        _assert_unknown()
    messages = [r.getMessage() for r in caplog.records if r.name == wordnet.__name__]
    assert len(messages) == 1, messages  # said once per process, not once per lookup
    assert str(tmp_path) in messages[0] and "apt-get install wordnet-base" in messages[0]


def test_a_broken_database_means_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture, fresh) -> None:
    for name in wordnet.REQUIRED_FILES:
        (tmp_path / name).write_text("")
    (tmp_path / "index.noun").write_text("dog n not-a-number\n")  # nltk: "file index.noun, line 1: ..."
    monkeypatch.setenv(wordnet.ENV_VAR, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=wordnet.__name__):
        _assert_unknown()
    messages = [r.getMessage() for r in caplog.records if r.name == wordnet.__name__]
    assert len(messages) == 1, messages
    assert "cannot be read" in messages[0] or "nltk is not installed" in messages[0]


def test_without_nltk_everything_is_unknown(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                            fresh) -> None:
    for name in [m for m in sys.modules if m == "nltk" or m.startswith("nltk.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nltk", None)  # `import nltk` raises ImportError
    with caplog.at_level(logging.WARNING, logger=wordnet.__name__):
        _assert_unknown()
    messages = [r.getMessage() for r in caplog.records if r.name == wordnet.__name__]
    assert len(messages) == 1 and ("nltk" in messages[0] or "no database" in messages[0]), messages
