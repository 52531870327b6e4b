"""Word groups the rules editor swaps within, by principle (content, attribute, spatial, contextual).

Each group holds interchangeable terms of one kind, so a swap changes one fact and keeps the
sentence grammatical: a color for a color, a plural count for a plural count, "on the left" for
"on the right". Nouns come as (singular, plural) so the grammatical number is kept.
"""

from __future__ import annotations

PRINCIPLES = ("content", "attribute", "spatial", "contextual")

PRINCIPLE_DESCRIPTIONS = {
    "content": "change what is depicted: an object, animal or person, or how many there are",
    "attribute": "change a descriptor of something depicted: color, material, size, texture, state",
    "spatial": "change where things are or what they do: position, relation, direction, motion",
    "contextual": "change the surroundings: setting, weather, time of day, season",
}

NOUN_GROUPS: dict[str, list[tuple[str, str]]] = {
    "shape": [("circle", "circles"), ("square", "squares"), ("triangle", "triangles"), ("star", "stars")],
    "animal": [("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"), ("cow", "cows"),
               ("sheep", "sheep"), ("elephant", "elephants"), ("bear", "bears"), ("giraffe", "giraffes")],
    "person": [("man", "men"), ("woman", "women"), ("boy", "boys"), ("girl", "girls"), ("child", "children")],
    "vehicle": [("car", "cars"), ("bus", "buses"), ("truck", "trucks"), ("bicycle", "bicycles"),
                ("motorcycle", "motorcycles"), ("train", "trains"), ("boat", "boats"), ("airplane", "airplanes")],
    "food": [("apple", "apples"), ("banana", "bananas"), ("orange", "oranges"), ("pizza", "pizzas"),
             ("sandwich", "sandwiches"), ("cake", "cakes"), ("donut", "donuts")],
    "furniture": [("chair", "chairs"), ("table", "tables"), ("bed", "beds"), ("couch", "couches"),
                  ("bench", "benches"), ("desk", "desks")],
    "object": [("cup", "cups"), ("bottle", "bottles"), ("book", "books"), ("umbrella", "umbrellas"),
               ("clock", "clocks"), ("vase", "vases"), ("ball", "balls"), ("kite", "kites")],
}

WORD_GROUPS: dict[str, dict[str, list[str]]] = {
    "content": {
        "count": ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many"],
    },
    "attribute": {
        "color": ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray"],
        "material": ["wooden", "metal", "glass", "plastic", "stone", "leather", "paper"],
        "size": ["small", "large", "tiny", "huge", "tall", "short"],
        "texture": ["striped", "spotted", "checkered", "plain"],
        "state": ["open", "closed"],
        "age": ["young", "old"],
    },
    "spatial": {
        "horizontal": ["on the left", "on the right"],
        "vertical": ["at the top", "at the bottom"],
        "relation_lr": ["to the left of", "to the right of"],
        "relation_ud": ["above", "below", "under"],
        "containment": ["inside", "outside"],
        "depth": ["in front of", "behind"],
        "center": ["in the center", "in the corner"],
        "motion": ["running", "walking", "sitting", "standing", "jumping", "flying", "swimming", "lying"],
    },
    "contextual": {
        "time": ["during the day", "at night", "at sunset", "at dawn"],
        "time_word": ["morning", "evening", "afternoon", "night"],
        "weather": ["sunny", "rainy", "snowy", "foggy", "cloudy", "stormy"],
        "season": ["spring", "summer", "autumn", "winter"],
        "setting": ["a gray wall", "a blue sky", "a green field", "a sandy beach", "a city street", "a forest",
                    "a kitchen", "a living room", "a desert", "a snowy mountain"],
        "place": ["beach", "street", "park", "forest", "kitchen", "office", "garden", "field", "lake", "mountain"],
    },
}

# Content also edits nouns (kept in NOUN_GROUPS for their singular/plural pairs).
NOUN_PRINCIPLE = "content"
