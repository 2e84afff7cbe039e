"""The word list for one-time transfer codes such as ``7-crossbow-gazelle``.

A code is a short number followed by words from :data:`WORDS`, in the manner of
the PGP word list and magic-wormhole codes: easy to read aloud over the phone
and to type. Each word carries 8 bits, since there are exactly 256 of them.

The words are chosen to be:

* lowercase ASCII, 4 to 8 letters, common and easy to spell;
* unambiguous when spoken: no homophones (``bear``/``bare``), no words
  spelled differently in British and American English;
* inoffensive, in any common reading;
* prefix-free: no word is a prefix of another, so a code can be completed or
  checked as soon as a word is typed, without waiting for a separator.

The order is alphabetical and is part of the format: a word's index is its
value. Never reorder, replace or remove a word once codes are in use.
"""

from __future__ import annotations

import secrets

# Words in a new code: 24 bits. The hub and the sender stop a code after three
# failed claims, so a guesser wins with odds of 3 in 16.7 million.
CODE_WORDS = 3

# Grouped by initial letter; unformatted, the formatter would put each word on its own line.
# fmt: off
WORDS: tuple[str, ...] = (
    "acorn", "almond", "anchor", "apple", "apricot", "arrow", "atlas", "avocado",
    "badger", "bagel", "bamboo", "banana", "banjo", "basket", "beacon", "beetle", "bicycle",
    "birch", "bison", "blanket", "blossom", "bottle", "breeze", "bucket", "buffalo", "butter",
    "button",
    "cabin", "cactus", "camel", "candle", "canoe", "canvas", "canyon", "captain", "carpet",
    "carrot", "cashew", "castle", "cedar", "celery", "cheetah", "cherry", "circus", "cloud",
    "clover", "cobalt", "cobra", "coconut", "comet", "compass", "condor", "cookie", "copper",
    "coral", "cradle", "crayon", "cricket", "crossbow", "crystal", "cupcake",
    "daisy", "diamond", "dolphin", "domino", "donkey", "dragon",
    "eagle", "eclipse", "emerald", "engine",
    "fabric", "falcon", "feather", "ferret", "fiddle", "forest", "fossil", "funnel",
    "gadget", "galaxy", "garden", "garlic", "gazelle", "gecko", "ginger", "giraffe", "glacier",
    "goblet", "goose", "gopher", "gravel", "guitar",
    "hammer", "hamster", "harvest", "helmet", "heron", "hippo", "hockey", "honey", "horizon",
    "igloo", "iguana",
    "jacket", "jaguar", "jigsaw", "jungle",
    "kayak", "kettle", "kitten", "koala",
    "ladder", "lagoon", "lantern", "legend", "lemon", "lemur", "leopard", "lizard", "lobster",
    "lotus",
    "magnet", "magpie", "mango", "maple", "marble", "marmot", "meadow", "meerkat", "melon",
    "meteor", "mirror", "mitten", "moose", "mosaic", "muffin",
    "napkin", "nebula", "nectar", "needle", "noodle",
    "oasis", "ocean", "ocelot", "octopus", "olive", "onion", "opera", "orange", "orbit",
    "orchid", "otter", "oyster",
    "paddle", "pancake", "panda", "panther", "papaya", "parade", "parrot", "peach", "peanut",
    "pebble", "pelican", "pencil", "penguin", "pepper", "piano", "pickle", "pigeon", "pillow",
    "pirate", "pixel", "planet", "plaza", "pocket", "popcorn", "potato", "pretzel", "puffin",
    "pumpkin", "puzzle",
    "quartz", "quilt",
    "rabbit", "radar", "radish", "rainbow", "raisin", "ribbon", "river", "robin", "rocket",
    "rodeo",
    "saddle", "safari", "sandal", "sardine", "scooter", "shovel", "silver", "sketch", "socket",
    "sonnet", "sparrow", "spiral", "spoon", "squid", "statue", "summer", "summit", "sunset",
    "swan",
    "tablet", "tango", "teapot", "temple", "tennis", "thunder", "ticket", "tiger", "timber",
    "tomato", "topaz", "toucan", "trophy", "trumpet", "tulip", "tundra", "tunnel", "turtle",
    "tuxedo",
    "umbrella", "unicorn",
    "valley", "vector", "velvet", "viking", "violin", "volcano", "voyage",
    "waffle", "wagon", "wallet", "walnut", "walrus", "whistle", "willow", "window", "winter",
    "wizard", "wombat",
    "zebra", "zenith", "zipper",
)
# fmt: on


def new_code_words(count: int = CODE_WORDS) -> str:
    """The secret part of a new code, e.g. ``crossbow-gazelle-tulip``."""
    return "-".join(secrets.choice(WORDS) for _ in range(count))
