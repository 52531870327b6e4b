"""The rules editor's sense errors (issue 24), each from the real caption it was found in.

Still true of the image: a swap the image may still show ("A baby crawls" -> "A boy crawls") is never
made. Nonsense: a swap that does not fit its phrase ("riding horseback" -> "catching horseback") is never
made. Each test checks the editor's candidates (every replacement it could draw) and the lexicon's
`still_true` answer where the error is a lexical one.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml

from tpo_ray.negatives import sense
from tpo_ray.negatives.lexicon import LexiconError, lexicon, parse_lexicon, still_true
from tpo_ray.negatives.rules import choose_principle, find_candidates, rule_edit

LEXICON_YAML = Path(__file__).resolve().parents[2] / "tpo_ray/negatives/lexicon/lexicon.yaml"


def options_for(caption: str, term: str) -> set[str]:
    """Every replacement the editor may draw for `term` in `caption` (empty: the term is never edited)."""
    return {o[2].lower() for c in find_candidates(caption) if caption[c.start:c.end].lower() == term
            for o in c.options}


def all_negatives(caption: str, seeds: int = 60) -> set[str]:
    return {out.negative for s in range(seeds) for out in [rule_edit(caption, seed=s, max_edits=2)] if out}


# ------------------------------------------------------------------------------- still true of the image
def test_a_baby_is_never_made_a_boy() -> None:
    assert still_true("baby", "boy") == "compatible"  # a baby can be a boy
    assert still_true("babies", "girls") == "compatible"
    assert still_true("man", "woman") is None and still_true("man", "child") is None  # gender, age
    # "baby" is never swapped (lexicon `substitutes`: often an animal's young, "her baby"), so never "a boy"
    assert options_for("A baby crawls on the floor", "baby") == set()
    replacements = options_for("A kid crawls on the floor", "kid")
    assert replacements and not replacements & {"boy", "girl", "child", "baby"} and {"man", "woman"} <= replacements
    assert not any(n.startswith(("A boy ", "A girl ")) for n in all_negatives("A baby crawls on the floor"))


def test_a_ship_is_never_made_a_ferry() -> None:
    assert still_true("ship", "ferry") == "hyponym"
    assert still_true("on a ship", "on a ferry") == "hyponym"
    replacements = options_for("A man ON A SHIP", "ship")
    assert replacements and not replacements & {"ferry", "boat", "yacht", "cruise ship", "submarine"}


@pytest.mark.parametrize("relation", ["opposite", "behind", "in front of", "across from", "beside", "near", "by"])
def test_next_to_and_near_go_only_far(relation: str) -> None:
    assert still_true("next to", relation) in ("compatible", "synonym")
    assert still_true("near", relation) in ("compatible", "synonym") or relation == "near"
    assert still_true("next to", "far from") is None and still_true("behind", "in front of") is None
    assert options_for("A dog sitting next to a cat", "next to") == {"far from"}
    assert options_for("A bicycle parked near a curb", "near") == {"far from"}


def test_holding_is_never_made_touching() -> None:
    assert still_true("holding", "touching") == "compatible"
    caption = "A crowd of people holding their cameras up"
    assert "touching" not in options_for(caption, "holding")
    assert "holding" not in options_for("a child touching a balloon", "touching")


def test_several_is_never_made_many() -> None:
    for a, b in (("several", "many"), ("several", "some"), ("many", "a few")):
        assert still_true(a, b) == "compatible"
    assert not options_for("several dogs on the grass", "several") & {"many", "some", "a few"}
    assert options_for("several dogs on the grass", "several") == {"two"}  # a vague plural against a small count


def test_sitting_is_never_made_resting() -> None:
    assert still_true("sitting", "resting") == "compatible"
    replacements = options_for("a dog sitting on the grass", "sitting")
    assert replacements and not replacements & {"resting", "waiting", "posing", "perched", "sleeping"}
    assert replacements == {"standing"}  # the vetted posture (lexicon `substitutes`)
    assert options_for("a laptop sitting on a desk", "sitting") == set()  # of a thing, "standing" says the same


# ------------------------------------------------------------------------------------------ nonsense
def test_riding_is_never_made_catching_horseback() -> None:
    assert options_for("a man riding horseback", "riding") == set()  # "horseback" is no verb's listed object
    assert "catching" not in options_for("a man riding a bicycle", "riding")
    assert "pushing" in options_for("a man riding a bicycle", "riding")
    # the noun follows its verb too: "riding a surfboard", never "riding a volleyball"
    surf = options_for("a man riding a surfboard under the swell of a wave", "surfboard")
    assert "volleyball" not in surf and surf <= {"kayak", "raft"}


def test_an_age_word_fits_its_noun() -> None:
    assert options_for("a young boy", "young") == set()  # never "elderly boy", "old boy", "middle-aged boy"
    assert options_for("Young child looking enthused over some dessert", "young") == set()
    assert options_for("a young man", "young") == {"old", "elderly", "middle-aged"}
    assert options_for("an old dog", "old") == {"young"}  # never "an elderly dog"
    assert options_for("an old car", "old") == set()  # a car has no age
    assert options_for("an elderly man", "man") == {"woman"}  # never "an elderly boy" or "an elderly girl"
    assert options_for("a little kid", "kid") == set()  # "a little man" is a boy: a size word before a person keeps its age


def test_a_direction_fits_its_verb() -> None:
    caption = "A boy jumping off a pier into a lake"
    assert options_for(caption, "into") == set()
    assert not any(" out of " in n for n in all_negatives(caption))
    assert options_for("a boy jumping into a lake", "into") == {"out of"}
    assert options_for("a beige cat looking into a big mirror", "into") == set()


def test_a_verb_is_never_edited_as_a_noun() -> None:
    assert options_for("a poodle circles a sparkler", "circles") == set()
    assert not any("ovals" in n for n in all_negatives("a poodle circles a sparkler"))
    assert options_for("A batter up to bat at a baseball game", "bat") == set()
    assert options_for("A lime green room with curtains", "lime") == set()


def test_a_body_part_fits_its_owner_and_its_count() -> None:
    assert options_for("a dog with four legs", "legs") == set()  # never "four knees"
    assert options_for("the eye of the planet Jupiter", "eye") == set()
    assert options_for("a man raising his hand", "hand") == set()  # a hand does what no other part does
    assert not options_for("a man raising his arm", "arm") & {"tail", "wing", "paw"}
    wings = options_for("a bird spreading its wings", "wings")
    assert wings and wings <= {"tails", "beaks", "claws", "feathers"}


def test_a_picture_word_is_swapped_only_as_the_frame() -> None:
    assert options_for("A woman poses for a photo", "photo") == set()  # never "poses for a cartoon"
    assert "painting" in options_for("a photo of a cat", "photo")
    assert options_for("Colorful kite being flown", "colorful") == set()
    assert options_for("a sepia cat", "sepia") == set() and options_for("a sepia photo", "sepia")


def test_a_lifeless_subject_keeps_to_verbs_that_fit_it() -> None:
    book = options_for("A book is lying open on a coffee table", "lying")
    assert book and "squatting" not in book and "standing" in book
    assert "skiing" not in options_for("A young cow is resting in a grass field", "resting")
    assert "skiing" in options_for("A young man is resting in a grass field", "resting")


def test_idioms_and_agreement_are_kept() -> None:
    for caption, kept in (("A two way street has minimal cars on it.", "two"),
                          ("A black and white photo of a guy", "white"),
                          ("A woman giving a thumbs up sign.", "sign"),
                          ("the full moon over a lake", "full")):
        assert options_for(caption, kept) == set(), caption
    assert "one bowl" not in {o.split(" of")[0] for o in
                              options_for("Four bowls of different eatables are kept on the slab.", "four")}


# ------------------------------------------------------------------------------------ principle choice
def test_choose_principle_honours_the_weights_among_available_ones() -> None:
    rng = random.Random(0)
    draws = [choose_principle({"content", "contextual"}, ["content", "attribute", "spatial", "contextual"],
                              {"content": 1.0, "attribute": 1.0, "spatial": 1.0, "contextual": 3.0}, rng)
             for _ in range(4000)]
    assert 0.72 < draws.count("contextual") / len(draws) < 0.78  # 3 : 1 among the two available
    # `availability` divides each weight by how often the principle is available across captions
    rng = random.Random(0)
    draws = [choose_principle({"content", "contextual"}, ["content", "contextual"], None, rng,
                              availability={"content": 0.9, "contextual": 0.3}) for _ in range(4000)]
    assert 0.72 < draws.count("contextual") / len(draws) < 0.78  # (1/0.3) : (1/0.9) = 3 : 1


# ------------------------------------------------------------------------------------------- the data
def test_compatible_classes_are_read_both_ways() -> None:
    lex = lexicon()
    assert any({"near", "next to", "beside", "by"} <= general for general, _ in lex.compatible)
    for a, b in (("resting", "kneeling"), ("kneeling", "resting"), ("touching", "carrying")):
        assert still_true(a, b) == "compatible", (a, b)
    assert still_true("carrying", "throwing") is None  # two specific terms of one entry contradict


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["compatible"].append({"general": ["near"]}), r"compatible\[\d+\]: write a list"),
    (lambda d: d["objects"].update(flyng=["kite"]), r"objects: \['flyng'\] are not terms of `words`"),
    (lambda d: d["frames"].append("art_medum"), r"frames: \['art_medum'\] are not noun groups"),
    (lambda d: d["direction_verbs"].update(pasing=["walking"]), "direction_verbs: .*not groups of `words`"),
])
def test_a_bad_sense_entry_is_named(change, message: str) -> None:
    data = copy.deepcopy(yaml.safe_load(LEXICON_YAML.read_text()))
    change(data)
    with pytest.raises(LexiconError, match=message):
        parse_lexicon(data, "lexicon.yaml")


def test_fits_reads_dimensions_of_terms_and_groups() -> None:
    lex = lexicon()
    assert sense.fits("young", "boy", "person", lex) and not sense.fits("elderly", "boy", "person", lex)
    assert sense.fits("old", "dog", "animal", lex) and not sense.fits("elderly", "dog", "animal", lex)
    assert not sense.fits("young", "car", "land_vehicle", lex)


# ------------------------------------------------------- more errors, from a read of real COCO captions
@pytest.mark.parametrize(("caption", "term", "never"), [
    ("A young child holds up her bowl with a spoon in it.", "child", {"man", "boy", "guy", "gentleman"}),
    ("a teenager attempting a jump on his skateboard", "teenager", {"woman", "girl", "lady"}),
    ("A computer monitor with a keyboard and a mouse.", "mouse", None),  # the computer's mouse: kept
    ("A table topped with a couple glasses of OJ and orange slices.", "orange", None),  # the fruit
    ("A very bright red plate with some tasty looking food.", "bright", None),  # shades the colour
    ("A kitty cat lies down on a computer keyboard.", "lies", None),  # never "stands down"
    ("A small child laying on a bed drinking from a bottle.", "small", None),  # never "a massive child"
    ("A child eating a plate of food with hands", "hands", None),  # never "with knees"
    ("A person holding a cup cake with chocolate icing and sprinkles.", "chocolate", None),  # never "popcorn icing"
    ("A Baseball player swinging a bat over home plate.", "plate", None),  # never "home pan"
    ("The jets are flying through the air in unison.", "the air", None),  # never "through the moon"
    ("A street sign at an intersection of Library Way", "street sign", {"stop sign"}),
    ("A man wearing a hat while standing in front of a mirror.", "hat", {"cap", "beanie"}),
    ("Man laughing standing next to his motorcycle", "laughing", {"sad", "angry", "happy", "tired"}),
    ("A herd of giraffe standing next to each other eating.", "giraffe", None),  # never "a herd of pig"
])
def test_errors_found_in_real_captions_are_not_made(caption: str, term: str, never: set[str] | None) -> None:
    replacements = options_for(caption, term)
    if never is None:
        assert replacements == set(), (caption, replacements)
    else:
        assert not replacements & never, (caption, replacements & never)


def test_more_idioms_senses_and_compound_heads_are_kept() -> None:
    assert options_for("a man talking on a cell phone outside of a fast food place", "fast") == set()
    assert options_for("Different people are doing skateboard tricks and riding.", "skateboard") == set()
    assert options_for("A plate with chicken, bread, broccoli and carrots.", "chicken") == set()  # the meat
    assert options_for("a dog barks at a cat", "dog") == {"goat", "pig"}  # "barks" is the dog's verb; a cat is named
    assert options_for("A boy is riding a skateboard on a ramp.", "riding") <= {"carrying", "pushing", "pulling",
                                                                               "dragging", "holding", "lifting",
                                                                               "grabbing", "dropping"}


def test_particles_results_and_parts_of_things_are_kept() -> None:
    assert options_for("A street scene with the street sign knocked over", "over") == set()  # never "knocked under"
    assert options_for("posts, all three of which are dotted with graffiti.", "dotted") == set()
    assert options_for("two hands holding knives prying open a section", "open") == set()
    assert options_for("two hands holding knives prying open a section", "two") == set()  # never "three hands"
    assert not options_for("a person in a car sits", "car") & {"motorbike", "bicycle", "bike", "scooter"}
    assert options_for("A stop sign taken through the window of a train", "window") == set()
    assert options_for("a cat under a table", "under") == set()  # above/below: never swapped (`substitutes`)
    assert options_for("a dog next to him", "next to")


def test_a_noun_named_twice_is_kept() -> None:
    caption = "A surfer has launched his dog across a wave as the dog holds on for dear life."
    assert options_for(caption, "dog") == set()  # never "launched his beaver ... as the dog holds on"
    assert options_for("A black bear holds a baby", "black") == set()  # a black bear is a kind of bear


def test_relations_and_tables_fit_their_things() -> None:
    assert options_for("A woman flying a kite over a sandy beach.", "over") == set()  # never "under a sandy beach"
    assert options_for("A main sitting at a table being served", "table") <= {"desk", "dining table", "counter"}
    assert options_for("A cat sleeping on a table", "table") == {"desk", "bench"}


def test_vehicles_fit_on_or_in_and_gallops_need_a_beast() -> None:
    caption = "A policeman on a motorcycle at night watching pedestrians cross a street"
    assert not options_for(caption, "motorcycle") & {"ambulance", "car", "taxi", "limousine"}
    assert "galloping" not in options_for("A man and a woman standing over two pizzas.", "standing")
    assert options_for("A patio umbrella pointed inside out over a picnic table.", "inside") == set()


def test_a_preposition_needs_its_thing() -> None:
    assert "outside of" not in options_for("a close up of a train with a view inside", "inside")


# ------------------------------------------------ the graded sample of lexicon v4 (docs/negatives.md)
def negatives_over_seeds(caption: str) -> set[str]:
    """Every negative the editor makes of `caption` at seeds 0..19, with one or two edits."""
    return {out.negative for s in range(20) for budget in (1, 2)
            for out in [rule_edit(caption, seed=s, max_edits=budget)] if out}


GRADED_ERRORS = [
    # person words whose ages overlap (a girl may be a young woman, a teenager a child or a young adult)
    ("a woman running on a trail", "a girl running on a trail"),
    ("a man riding a horse", "a teenager riding a horse"),
    ("A woman is holding a paint can and redecorating a room.", "A teenager is holding a paint can and redecorating a room."),
    ("a girl on the bottom of a horse", "a lady on the bottom of a horse"),
    ("A women who is taking a picture of her food.", "A teenagers who is taking a picture of her food."),
    ("A man is speaking to his boss about a project at work.", "A teenager is speaking to his boss about a project at work."),
    # vertical relations over a place, ground or a large fixed thing
    ("There's a warning not to park under this tree.", "There's a warning not to park above this tree."),
    ("A couple of men standing on top of a field together.", "A couple of men standing underneath a field together."),
    ("Groups of people seated under shade umbrellas at blue tables and chairs drinking beverages.",
     "Groups of people seated above shade umbrellas at blue tables and chairs drinking beverages."),
    # ground and weather
    ("One white and red plane and one grey plane on the ground", "One white and red plane and one grey plane on the snow"),
    ("A women who is walking in the snow on skis.", "A women who is walking in a thunderstorm on skis."),
    # a new noun that does not fit its verb or phrase
    ("The man and woman are playing a video game.", "The man and woman are playing a floor lamp."),
    ("A person is riding a ramp on a skateboard.", "A person is riding a ramp on a ball."),
    ("A bike that is leaning against a rail.", "A train that is leaning against a rail."),
    ("A woman is speaking on the phone and pacing back and forth.",
     "A woman is speaking on the monitor and pacing back and forth."),
    ("a flag furling in the wind", "a placemat furling in the wind"),
    ("an oval bathtub and a square shower curtain", "an oval bathtub and a square shower map"),
    ("a pick-up truck rolling over a grassy field", "a pick-up car rolling over a grassy field"),
    # a descriptor only an adult fits
    ("A woman wearing blue jeans with a sexy foot in a pink shoe.", "A child wearing blue jeans with a sexy foot in a pink shoe."),
    # a count referred to again
    ("Two cups of coffee, one with latte art of a map of United States. The other has latte art of a map of Africa.",
     "One cup of coffee, one with latte art of a map of United States. The other has latte art of a map of Africa."),
    # a state that no longer fits its cause or subject; facts no image shows; kinds of each other
    ("a watercolor painting of a snowy owl standing in a grassy field",
     "a watercolor painting of a snowy owl climbing in a grassy field"),
    ("a tennis court that is very wet from lots of rain", "a tennis court that is very dry from lots of rain"),
    ("an elder politician giving a campaign speech", "an elder surgeon giving a campaign speech"),
    ("The science fiction writer is creating a futuristic world in their book.",
     "The science fiction writer is creating a medieval world in their book."),
    ("The sculpture rolled off the shelf because it wasn't anchored", "The relief rolled off the shelf because it wasn't anchored"),
    ("a painting of a peaceful lakeside landscape", "an illustration of a peaceful lakeside landscape"),
    ("a man riding a camel on the beach", "a man riding a camel on the island"),
    ("the door of knowing, a portal brightly opening the way through darkness. abstract anime landscape oil painting.",
     "the door of knowing, a portal brightly opening the way through darkness. cartoonish anime landscape oil painting."),
]


@pytest.mark.parametrize(("caption", "bad"), GRADED_ERRORS)
def test_graded_errors_of_lexicon_v4_are_never_made(caption: str, bad: str) -> None:
    assert bad not in negatives_over_seeds(caption)


def test_person_swaps_contradict_by_gender_or_disjoint_ages() -> None:
    for a, b in [("woman", "girl"), ("woman", "teenager"), ("woman", "lady"), ("man", "teenager"), ("girl", "lady"),
                 ("women", "teenagers"), ("man", "boy"), ("boy", "teenager")]:
        assert still_true(a, b) is not None, (a, b)
    for a, b in [("man", "woman"), ("boy", "girl"), ("men", "women"), ("lady", "gentleman"), ("baby", "man"),
                 ("child", "woman"), ("kid", "man")]:
        assert still_true(a, b) is None, (a, b)
    assert not options_for("a woman running on a trail", "woman") & {"girl", "teenager", "lady"}
    assert "man" in options_for("a woman running on a trail", "woman")
    # an adult-only descriptor keeps the person an adult
    assert not options_for("A woman wearing blue jeans with a sexy foot", "woman") & {"child", "baby", "kid", "boy"}


def test_vertical_relations_need_a_small_thing() -> None:
    assert options_for("There's a warning not to park under this tree.", "under") == set()
    assert options_for("A couple of men standing on top of a field together.", "on top of") == set()
    assert options_for("a cat sitting under a table", "under") == set()  # vertical relations: never swapped
    assert options_for("a cat sleeping under an umbrella", "under") == set()


def test_ground_and_weather_are_kept_apart() -> None:
    assert options_for("a plane on the ground", "on the ground") == set()
    assert "on the ground" not in options_for("a dog lying on the floor", "on the floor")
    weather = {"in the rain", "in the fog", "in a storm", "in a thunderstorm", "in a blizzard", "in the mist"}
    assert not options_for("A woman walking in the snow on skis.", "in the snow") & weather
    assert "in the snow" not in options_for("A man walking in the rain", "in the rain")


def test_nouns_keep_to_their_verb_and_compound() -> None:
    assert options_for("A woman is speaking on the phone", "phone") <= {"cell phone", "smartphone", "telephone"}
    assert options_for("A person is riding a ramp on a skateboard.", "skateboard") <= {"scooter", "bicycle"}
    assert "train" not in options_for("A bike that is leaning against a rail.", "bike")
    assert options_for("a square shower mirror", "mirror") == set()  # "shower" opens a compound
    assert options_for("a Harley-Davidson motorcycle with a decal", "motorcycle") == set()  # a hyphenated modifier
    assert options_for("a pick-up truck rolling over a grassy field", "pick-up truck") >= {"fire truck", "school bus"}
    assert options_for("a flag furling in the wind", "flag") == set()


def test_counts_referred_to_again_and_told_stories_are_kept() -> None:
    assert options_for("Two cups of coffee, one with milk. The other has cream.", "two") == set()
    assert options_for("two dogs, both asleep", "two") == set()
    assert options_for("two people facing each other", "two")  # "each other" refers to no count
    assert find_candidates("The writer is creating a futuristic world in their book.") == []


def test_an_instrument_is_content_and_a_state_keeps_its_cause() -> None:
    out = [rule_edit("A man is playing the guitar and singing a song.", seed=s) for s in range(40)]
    assert options_for("A man is playing the guitar and singing a song.", "playing the guitar")
    assert all(o.principle == "content" for o in out if o and "guitar" not in o.negative)
    assert options_for("a tennis court that is very wet from lots of rain", "wet") == set()
    assert not options_for("a snowy owl standing in a field", "standing") & {"climbing", "crawling"}
    assert options_for("an elder politician giving a campaign speech", "politician") == set()
    assert lexicon().version >= 5


def test_two_word_boards_and_double_deckers_are_their_own_kind() -> None:
    assert options_for("a person riding a surf board on a wave", "surf board") == {"skate board", "wake board",
                                                                                  "boogie board", "snow board"}
    replacements = options_for("A double-decker bus is stopped along a curb.", "double-decker bus")
    assert replacements and not replacements & {"double decker bus", "city bus", "tour bus"}
    assert options_for("An eco-friendly bus driving through a city", "bus")  # an adjective, not a compound


def test_a_place_named_as_a_part_of_another_and_the_sunshine_are_kept() -> None:
    # read in a fresh sample of COCO captions (seed 77): "the shore of the prairie", "relaxing in the nebula"
    assert options_for("Old boats are lined up on the shore of the beach.", "the beach") == set()
    assert not any("nebula" in n or "moon" in n for n in negatives_over_seeds("The cat is relaxing in the sun."))


def test_errors_read_in_a_fresh_coco_sample_are_not_made() -> None:
    # seed 77 of benchmarks/negatives_quality.py on coco_val2017, read by hand
    assert not any(" jumping " in n for n in negatives_over_seeds("A stuffed bear is sitting outside an eatery."))
    assert options_for("A briefcase full of old used books on sale", "full") == set()
    assert options_for("A fire hydrant has frozen and is covered in icicles.", "frozen") == set()
    assert not options_for("a person standing wearing a suit and tie", "suit") & {"shirt", "coat", "jacket"}
    assert "nightstand" not in options_for("there is a woman laying in a bed using a lap top", "bed")
    # seed 31: a compound fence, a side of a part
    assert options_for("Zebra grazing in front of a chain link fence.", "fence") == set()
    assert options_for("A man kisses the top of a woman's head.", "head") == set()
